"""EGI Check-in: one identity (an OIDC access token) behind every EGI service.

- access layer (plain Python, no Prefect): `errors`, `tokens` (parsing, claims, VOs),
  `sources` (explicit, environment, token files, refresh token, oidc-agent), `oidc`
  (discovery, token endpoint, userinfo, JWKS), `provider` (the one token provider every
  service uses), `identity` (who a token belongs to);
- `block`: the `CheckinCredentials` block (its client is the token provider);
- `tasks`: `get_checkin_token`.

The public names are exported by `prefect_egi.tasks`.
"""
