"""The Kubernetes protobuf schema kube-local speaks: the message types of the pinned k8s.io/api and
k8s.io/apimachinery release and how each field appears in Kubernetes JSON.

Both come from files ``scripts/gen_k8s_protos.py`` generates from that release
(docs/kubelocal-differences.md#protobuf): ``k8s.binpb``, the FileDescriptorSet of the groups' own
``generated.proto`` files, and ``k8s_json.json``, the Go struct tags (JSON name, omitempty, omitzero,
pointer, inlined) of the same types. They are loaded once, on first use.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

SCHEMA_DIR = Path(__file__).resolve().parent
DESCRIPTORS_FILE = SCHEMA_DIR / "k8s.binpb"
JSON_FIELDS_FILE = SCHEMA_DIR / "k8s_json.json"

META_V1 = "k8s.io.apimachinery.pkg.apis.meta.v1"
RUNTIME = "k8s.io.apimachinery.pkg.runtime"
#: Kinds of meta/v1 that every group version carries (a Status error, DeleteOptions of a delete...).
_META_KINDS = frozenset(
    {
        "Status",
        "DeleteOptions",
        "WatchEvent",
        "APIResourceList",
        "APIGroupList",
        "APIGroup",
        "APIVersions",
        "PartialObjectMetadata",
        "PartialObjectMetadataList",
        "ListOptions",
        "GetOptions",
        "CreateOptions",
        "UpdateOptions",
        "PatchOptions",
    }
)


@dataclass(frozen=True)
class JsonField:
    """How one protobuf field appears in Kubernetes JSON (Go's encoding/json over the Go struct)."""

    name: str  # the JSON key; "" for an inlined embedded struct
    omitempty: bool
    omitzero: bool
    pointer: bool  # a Go pointer: present on the wire exactly when set
    inline: bool  # an embedded struct whose fields Go's JSON puts in the enclosing object


@dataclass(frozen=True)
class Schema:
    pool: descriptor_pool.DescriptorPool
    #: message full name -> proto field name -> JsonField
    fields: dict[str, dict[str, JsonField]]
    #: messages whose Go type is a slice (``type Verbs []string``): JSON is the bare ``items`` array.
    slices: frozenset[str]
    versions: dict[str, str]

    def message_class(self, descriptor: Descriptor) -> type[Message]:
        return _message_class(descriptor)

    def descriptor(self, full_name: str) -> Descriptor | None:
        try:
            return self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return None

    def kind_descriptor(self, api_version: str, kind: str) -> Descriptor | None:
        """The message of ``kind`` in ``api_version`` ("v1", "policy/v1", "coordination.k8s.io/v1"),
        or None when the schema has no such type (kube-local then answers JSON)."""
        group, _, version = api_version.rpartition("/")
        if not version or not kind:
            return None
        if group == "meta.k8s.io" or (kind in _META_KINDS and self.descriptor(f"{META_V1}.{kind}")):
            return self.descriptor(f"{META_V1}.{kind}")
        package = "core" if not group else group.split(".", 1)[0]
        return self.descriptor(f"k8s.io.api.{package}.{version}.{kind}")


@functools.cache
def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


@functools.cache
def schema() -> Schema:
    """The schema, loaded from the generated files on first use."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS_FILE.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:  # --include_imports writes every file after its imports
        pool.Add(file_proto)
    raw = json.loads(JSON_FIELDS_FILE.read_text(encoding="utf-8"))
    versions = raw.pop("@versions")
    fields: dict[str, dict[str, JsonField]] = {}
    slices: set[str] = set()
    for message, entries in raw.items():
        if "@slice" in entries:
            slices.add(message)
            continue
        fields[message] = {
            proto_name: JsonField(
                name=json_name,
                omitempty="e" in flags,
                omitzero="z" in flags,
                pointer="p" in flags,
                inline="i" in flags,
            )
            for proto_name, (json_name, flags) in entries.items()
        }
    return Schema(pool, fields, frozenset(slices), versions)
