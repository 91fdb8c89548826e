"""The node runtime: TurbopiNode (policy_node) and its parts. Imports model and policy, never tools."""
