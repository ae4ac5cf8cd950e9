// Command etcd is etcd's server, built from the go.etcd.io/etcd/server/v3
// module at the release pinned in go.mod, for Tartan's end-to-end tests.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
