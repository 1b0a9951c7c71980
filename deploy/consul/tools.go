//go:build tools

// Package tools pins the Consul agent that Flotilla's e2e tests and the
// multi-host trial run against. Nothing here is compiled into Flotilla: the
// import only keeps github.com/hashicorp/consul in go.mod and go.sum, so
// `go build github.com/hashicorp/consul` from this module builds that version.
package tools

import _ "github.com/hashicorp/consul"
