"""What the SDK and the services share, free of the services' heavy dependencies: the instance
model (``instances``), domain errors (``errors``), request limits (``limits``), protobuf
conversion (``convert``) and the gRPC rich-status mapping (``grpc_errors``).

The services import them from here (``hybridpref_client.core.<module>``): one definition of each
class on both sides of the wire.
"""
