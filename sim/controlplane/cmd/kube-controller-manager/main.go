// Command kube-controller-manager is the upstream Kubernetes controller manager, built unmodified from
// k8s.io/kubernetes. This file only wires the upstream command into a binary, as upstream's main does.
package main

import (
	"os"
	_ "time/tzdata" // embedded zone database: CronJob timeZone works without host zoneinfo, as upstream

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // lets --logging-format=json work, as upstream
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics on /metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // build-info metric, as upstream
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
