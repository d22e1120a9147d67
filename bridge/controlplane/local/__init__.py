"""The local control plane: resource files in a state directory (`store`), the plane that follows
their journal (`plane`), fleets, and the parsing of the user's YAML files (`userfiles`)."""
