"""The routing-model contract between the predictor (serves it), the router (runs it) and offline code
(builds it): the bundle on disk, its data class, domain, PPM form, correction-model runtime, reference bins
and the proto conversion in both directions. Imports only ``common`` and the SDK."""
