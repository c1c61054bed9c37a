"""kube-local: an in-process Kubernetes API server subset for local mode and integration tests.

See ``server.py`` for :class:`KubeLocal`, :class:`KubeLocalThread` and :func:`run_kube_local`.
"""
