// Package tracing sets up OpenTelemetry for llorch: off by default (the
// global no-op provider: spans cost almost nothing), OTLP over HTTP when an
// endpoint is configured, and W3C trace context propagation either way so a
// caller's traceparent reaches the engines.
package tracing

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Propagator is W3C trace context plus baggage.
var Propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// defaultProvider is the global provider before anyone installs one: the
// delegate that makes no-op spans.
var defaultProvider = otel.GetTracerProvider()

// Enabled reports whether spans go anywhere: an exporting provider was
// installed (Setup with an endpoint, or a test's recorder). Hot paths skip
// making spans when it is false, and pass the caller's trace context on
// unchanged instead.
func Enabled() bool {
	tp := otel.GetTracerProvider()
	if tp == defaultProvider {
		return false
	}
	switch tp.(type) {
	case noop.TracerProvider, *noop.TracerProvider:
		return false
	}
	return true
}

// Tracer is llorch's tracer for a component ("router", "driver").
func Tracer(component string) trace.Tracer { return otel.Tracer("llorch/" + component) }

// Setup installs the propagator and, when endpoint is set (host:port or
// URL of an OTLP/HTTP collector), an exporting provider. The returned
// shutdown flushes spans; call it on exit.
func Setup(ctx context.Context, service, endpoint string) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(Propagator)
	if endpoint == "" {
		return func(context.Context) error { return nil }, nil
	}
	opts := []otlptracehttp.Option{}
	if strings.HasPrefix(endpoint, "http://") || strings.HasPrefix(endpoint, "https://") {
		opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
	} else {
		opts = append(opts, otlptracehttp.WithEndpoint(endpoint), otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	res, _ := resource.Merge(resource.Default(), resource.NewSchemaless(semconv.ServiceName(service)))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(2*time.Second)), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}
