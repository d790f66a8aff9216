// Command pause holds a "pod's" network namespace in the Docker e2e, as the
// pause container does in Kubernetes: the sidecar and the core join it
// (--network container:<pause>), so either can restart without the other
// losing its network.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}
