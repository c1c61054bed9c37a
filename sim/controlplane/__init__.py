"""The upstream Kubernetes control plane for tests and local mode: build.py builds etcd, kube-apiserver,
kube-scheduler and kube-controller-manager from the release go.mod pins; launcher.RealControlPlane runs
them with certificates from pki.py and the deploy's RBAC (rbac.py)."""
