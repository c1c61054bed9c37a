// Command kube-scheduler is the upstream Kubernetes scheduler, built unmodified from k8s.io/kubernetes.
// This file only wires the upstream command into a binary, the same way upstream's own main package does.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // lets --logging-format=json work, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics on /metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // build-info metric, as upstream
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand()))
}
