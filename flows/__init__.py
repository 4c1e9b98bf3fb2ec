"""prefect-egi flows: chains of the tasks in `tasks`, ready to run or deploy."""
