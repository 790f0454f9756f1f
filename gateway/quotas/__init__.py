"""Keep route quotas in step with the account's applied Service Quotas (``quotas sync``).

``names`` and ``sync`` are pure; ``yamledit`` rewrites numbers in the config text; ``client``
is the only module that calls AWS; ``command`` wires them for the CLI.
"""
