"""Django migrations of the flow-tracker app: no table, only its four permissions."""
