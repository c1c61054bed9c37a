"""kube-local's Kubernetes protobuf: the schema of the pinned release, the codec and content negotiation
(docs/kubelocal-differences.md#protobuf)."""
