package cli

import (
	"fmt"
	"os"
)

// nomadCookieKey is the environment variable a Nomad agent sets when it
// launches a plugin.
const nomadCookieKey = "NOMAD_PLUGIN_MAGIC_COOKIE"

// PluginMode reports whether a Nomad agent started this process.
func PluginMode() bool { return os.Getenv(nomadCookieKey) != "" }

// ServePlugin serves the driver plugin until the agent kills it. It is
// replaced by the driver package's server (see driver/).
var ServePlugin = func() int {
	fmt.Fprintln(os.Stderr, "llorch: the driver plugin is not built into this binary")
	return 1
}
