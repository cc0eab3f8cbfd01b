package driver

import (
	"context"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// Handshake is Nomad's: protocol 2 and its magic cookie.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

// grpcPlugin registers one service; go-plugin wants one Plugin per plugin
// set ("base", "driver") and both end up on the same gRPC server.
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	register func(*grpc.Server)
}

func (p *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	p.register(s)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, nil // server side only
}

// Serve runs the plugin until the agent kills it and returns the exit code.
func Serve() int {
	// The agent re-logs our stderr (JSON lines keep their level). go-plugin
	// swaps os.Stderr for a pipe the agent discards, so the logger is
	// bound to the original stderr before Serve.
	log := hclog.New(&hclog.LoggerOptions{
		Name:       PluginName,
		Level:      hclog.LevelFromString(envOr("LLORCH_LOG_LEVEL", "debug")),
		JSONFormat: true,
		Output:     os.Stderr,
	})
	d, err := New(log)
	if err != nil {
		log.Error("start plugin", "error", err)
		return 1
	}
	defer d.Close()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins: plugin.PluginSet{
			"base":   &grpcPlugin{register: func(s *grpc.Server) { base.RegisterBasePluginServer(s, d) }},
			"driver": &grpcPlugin{register: func(s *grpc.Server) { drivers.RegisterDriverServer(s, d) }},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger:     log,
	})
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
