// What a job may not decide: the engine options the driver owns (refused
// at StartTask, naming the field), options that run code the job chooses
// (refused unless the plugin config allows them), and model paths outside
// model_dir. engine.RulesFor holds the per-engine tables.

package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/llorch/llorch/engine"
)

// checkJobOptions refuses a task whose config env or extra_args sets an
// option the driver owns, or one that runs code without the plugin
// config's allowed_unsafe_options, and one whose task env (the job's `env`
// block) loads code. The error names the field.
func checkJobOptions(engName string, tcfg TaskConfig, taskEnv map[string]string, allowed []string) error {
	r := engine.RulesFor(engName)
	allow := map[string]bool{}
	for _, a := range allowed {
		allow[a] = true
	}
	for i, arg := range tcfg.ExtraArgs {
		o, code, found := r.Flag(arg)
		if !found {
			continue
		}
		field := fmt.Sprintf("extra_args[%d]", i)
		name := engine.FlagName(arg)
		if code {
			if allowedFlag(r, o, allow) {
				continue
			}
			return unsafeError(field, name, engName, o)
		}
		return ownedError(field, name, engName, o)
	}
	for _, k := range sortedKeys(tcfg.Env) {
		o, code, found := r.EnvVar(k)
		if !found {
			continue
		}
		field := "env"
		if code {
			if allow[k] {
				continue
			}
			return unsafeError(field, k, engName, o)
		}
		return ownedError(field, k, engName, o)
	}
	for _, k := range sortedKeys(taskEnv) {
		o, code, found := r.EnvVar(k)
		// PATH always comes from the agent; the rest never does.
		if !found || !code || k == "PATH" || allow[k] {
			continue
		}
		return fmt.Errorf("task env: %q (%s) is set in the task's env block: %s; this node allows it only if the plugin config lists %q in allowed_unsafe_options",
			k, engName, o.What, k)
	}
	return nil
}

// allowedFlag: an allowlist entry names a flag in any of its spellings.
func allowedFlag(r engine.Rules, o engine.Option, allow map[string]bool) bool {
	for _, f := range o.Flags {
		if allow[f] {
			return true
		}
	}
	return false
}

func ownedError(field, name, engName string, o engine.Option) error {
	msg := fmt.Sprintf("task config: field %q: %q sets %s, which the driver sets for %s; a job cannot set it", field, name, o.What, engName)
	if o.Field != "" {
		msg += fmt.Sprintf(" (use the task config field %q)", o.Field)
	}
	return errors.New(msg)
}

func unsafeError(field, name, engName string, o engine.Option) error {
	return fmt.Errorf("task config: field %q: %q (%s) %s; this node allows it only if the plugin config lists %q in allowed_unsafe_options",
		field, name, engName, o.What, name)
}

// neutralTaskEnv is the agent's task env without the variables the driver
// owns for this engine (the driver's own values, or none, apply instead),
// except those the agent's device env sets (a task with `device
// "nvidia/gpu"`), merged with the device env, which is left as it is.
func neutralTaskEnv(engName string, env, deviceEnv map[string]string) map[string]string {
	r := engine.RulesFor(engName)
	out := make(map[string]string, len(env)+len(deviceEnv))
	for k, v := range env {
		if _, code, owned := r.EnvVar(k); owned && !code {
			if dv, fromDevice := deviceEnv[k]; !fromDevice || dv != v {
				continue
			}
		}
		out[k] = v
	}
	for k, v := range deviceEnv {
		out[k] = v
	}
	return out
}

// resolveModel finds the model: a relative path is looked up in the node's
// model_dir. GGUF engines need a file; the others may take a model name.
// With model_dir set, a file must lie under it once symlinks are resolved
// (unless allowOutside), and the resolved path is what the engine gets, so
// a symlink swapped after the check cannot point it elsewhere.
func resolveModel(modelDir, model, engName string, allowOutside bool) (string, error) {
	p := model
	if !filepath.IsAbs(p) && modelDir != "" {
		p = filepath.Join(modelDir, p)
	}
	confined := modelDir != "" && !allowOutside
	needsFile := filepath.IsAbs(model) || strings.HasSuffix(model, ".gguf") || engName == "llamacpp" || engName == "ollama"
	fi, err := os.Stat(p)
	switch {
	case err == nil && fi.IsDir() && (engName == "llamacpp" || engName == "ollama"):
		return "", fmt.Errorf("model %s is a directory, not a GGUF file", p)
	case err == nil:
		if !confined {
			if abs, aerr := filepath.Abs(p); aerr == nil {
				p = abs
			}
			return p, nil
		}
		return confine(modelDir, model, p)
	case confined && (filepath.IsAbs(model) || hasDotDot(model)):
		return "", fmt.Errorf("model %q is outside model_dir %s (the plugin config's allow_models_outside_model_dir allows that)", model, modelDir)
	case needsFile && errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("model file %s not found on this node", p)
	case needsFile:
		return "", fmt.Errorf("model file %s: %v", p, err)
	default:
		return model, nil // a model name the engine resolves itself
	}
}

// confine resolves p and model_dir and checks one is under the other.
func confine(modelDir, model, p string) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", fmt.Errorf("model %s: %v", p, err)
	}
	realDir, err := filepath.EvalSymlinks(modelDir)
	if err != nil {
		return "", fmt.Errorf("model_dir %s: %v", modelDir, err)
	}
	rel, err := filepath.Rel(realDir, real)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", fmt.Errorf("model %q resolves to %s, outside model_dir %s (the plugin config's allow_models_outside_model_dir allows that)", model, real, modelDir)
	}
	return real, nil
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(filepath.ToSlash(p), "/") {
		if part == ".." {
			return true
		}
	}
	return false
}
