"""Alias of ``hybridpref_client.core.grpc_errors``: the module lives in the SDK distribution
(hybridpref-client), which the services depend on, so vendors get it without the services."""

import sys

from hybridpref_client.core import grpc_errors as _module

sys.modules[__name__] = _module
