// Command etcd is the upstream etcd server at the version Kubernetes pins, built unmodified from
// go.etcd.io/etcd/server/v3. Only the entry point lives here; etcdmain parses flags and runs the member.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
