"""The meshgate data plane: listeners, route table, request pipeline, integrations."""
