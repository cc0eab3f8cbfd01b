//go:build tools

// Package tools pins the Consul version the tests run against. It is a
// separate module so Consul's large dependency graph never enters llorch's.
package tools

import _ "github.com/hashicorp/consul"
