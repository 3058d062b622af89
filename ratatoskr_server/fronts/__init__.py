"""The ways into the gateway: each converts its wire format to domain calls and back."""
