package registry

import "errors"

// ErrDenied marks a registrar error caused by missing permission (e.g. a
// Consul ACL token without service:write). Retrying cannot fix it, so a
// supervisor gives up and the task is not reported ready.
var ErrDenied = errors.New("permission denied")
