package cli

import (
	"os"

	"github.com/llorch/llorch/driver"
)

// nomadCookieKey is the environment variable a Nomad agent sets when it
// launches a plugin.
const nomadCookieKey = "NOMAD_PLUGIN_MAGIC_COOKIE"

// PluginMode reports whether a Nomad agent started this process.
func PluginMode() bool { return os.Getenv(nomadCookieKey) != "" }

// ServePlugin serves the driver plugin until the agent kills it.
var ServePlugin = driver.Serve
