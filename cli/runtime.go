package cli

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// tuneRouterRuntime sets the Go runtime for a router that shares its node
// with engines, unless the operator set GOMAXPROCS, GOGC or GOMEMLIMIT
// (which always win), and logs what it runs with.
//
//   - GOMAXPROCS: Go's default, which follows the task's cgroup CPU limit
//     (Go ≥ 1.25) and otherwise the node's cores. The router's work per
//     request is small and mostly waiting; more procs than the CPU it may
//     use only adds scheduler wake-ups, and the engines on the node need
//     the cores more.
//   - GOGC stays 100: the request path allocates little (the ≤30 goal), so
//     collections are cheap, and a bigger heap target would spend memory
//     the node's engines and page cache need (RSS goal ≤ 100 MB at 1,000
//     streams).
//   - GOMEMLIMIT: 90 % of the task's cgroup memory limit when there is one,
//     so the collector works harder before the kernel's OOM killer would
//     (a soft limit; it never refuses an allocation).
func tuneRouterRuntime(log hclog.Logger) {
	limit := int64(-1)
	if os.Getenv("GOMEMLIMIT") == "" {
		if l, ok := cgroupMemoryLimit(); ok {
			limit = l / 10 * 9
			debug.SetMemoryLimit(limit)
		}
	}
	log.Info("go runtime", "gomaxprocs", runtime.GOMAXPROCS(0), "cpus", runtime.NumCPU(),
		"gogc", envOr("GOGC", "100"), "memory_limit_bytes", limit)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// cgroupMemoryLimit is the process's cgroup memory limit, from its own
// cgroup (/proc/self/cgroup): v2's memory.max, else v1's
// memory.limit_in_bytes; ok false when unlimited or unreadable.
func cgroupMemoryLimit() (int64, bool) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			files = append(files, "/sys/fs/cgroup"+parts[2]+"/memory.max")
		case strings.Contains(","+parts[1]+",", ",memory,"):
			files = append(files, "/sys/fs/cgroup/memory"+parts[2]+"/memory.limit_in_bytes")
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		// v1 reports "unlimited" as a huge page-rounded number.
		if err != nil || n <= 0 || n >= 1<<60 {
			continue
		}
		return n, true
	}
	return 0, false
}
