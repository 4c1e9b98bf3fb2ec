"""EGI FedCloud: the VMs of a VO on OpenStack sites that trust EGI Check-in.

- access layer (plain Python, no Prefect): `client` (sites as EGI describes them,
  keystoneauth federation + novaclient per site, one site's VMs or its failure),
  `inventory` (every site at once);
- `block`: the `FedCloud` block (its client is the site pool);
- `tasks`: `list_servers` (one site), `vm_inventory` (all of them).

The public names are exported by `prefect_egi.tasks`.
"""
