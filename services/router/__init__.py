"""The router: the mesh's one door."""
