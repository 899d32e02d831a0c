"""What the SDK and the services share, free of the services' heavy dependencies: the instance
model (``instances``), domain errors (``errors``), request limits (``limits``), protobuf
conversion (``convert``) and the gRPC rich-status mapping (``grpc_errors``).

The services import these under their old names, ``hybridpref.common.<module>``: those modules
are aliases of these (the same module objects), so both spellings name the same classes.
"""
