"""Where the router keeps a batch's instances between tagging and judging.

The router needs the texts twice: to tag every instance, then to judge the ones
routed to the LM. ``MemoryStore`` holds a unary request's instances as they are;
``SpillStore`` writes a stream's instances to a temporary file as they arrive, so a
100,000-instance stream keeps only ids, costs and tag rows in memory.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from hybridpref.v1 import common_pb2
from hybridpref_client.core.convert import instance_from_proto, instance_to_proto
from hybridpref_client.core.instances import PreferenceInstance


class MemoryStore:
    def __init__(self, instances: Sequence[PreferenceInstance]):
        self._instances = instances
        self.ids = [i.id for i in instances]
        self.human_costs = [i.human_cost for i in instances]

    def __len__(self) -> int:
        return len(self._instances)

    def get(self, rows: Sequence[int]) -> list[PreferenceInstance]:
        return [self._instances[r] for r in rows]

    def close(self) -> None:
        pass


class SpillStore:
    """Append-only, file-backed store (serialized protobuf records, offsets in memory)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="hybridpref-route-")  # noqa: SIM115 - open until close()
        self._spans: list[tuple[int, int]] = []
        self.ids: list[str] = []
        self.human_costs: list[float | None] = []

    def __len__(self) -> int:
        return len(self._spans)

    def extend(self, instances: Sequence[PreferenceInstance]) -> None:
        self._file.seek(0, 2)
        position = self._file.tell()
        for inst in instances:
            blob = instance_to_proto(inst).SerializeToString()
            self._file.write(blob)
            self._spans.append((position, len(blob)))
            position += len(blob)
            self.ids.append(inst.id)
            self.human_costs.append(inst.human_cost)

    def get(self, rows: Sequence[int]) -> list[PreferenceInstance]:
        out = []
        for r in rows:
            start, length = self._spans[r]
            self._file.seek(start)
            out.append(instance_from_proto(common_pb2.PreferenceInstance.FromString(self._file.read(length))))
        return out

    def close(self) -> None:
        self._file.close()


# Where a routing call keeps its instances: in memory (unary) or spilled to a file (streams).
InstanceStore = MemoryStore | SpillStore
