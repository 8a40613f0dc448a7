package app

import (
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kpr-proxy/kpr/internal/config"
)

// NewLogger builds the process logger: JSON (or console) to stderr, info
// level, debug from --v=4 up, as kube-proxy's klog verbosity maps.
func NewLogger(format config.LogFormat, verbosity uint32) (*zap.Logger, error) {
	var zc zap.Config
	if format == config.LogFormatConsole {
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
	} else {
		zc = zap.NewProductionConfig()
		zc.Sampling = nil // every line counts when debugging a Service
	}
	zc.EncoderConfig.TimeKey = "ts"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	if verbosity >= 4 {
		zc.Level = zap.NewAtomicLevelAt(zap.DebugLevel)
	}
	zc.DisableStacktrace = verbosity < 4
	return zc.Build()
}
