package config

import (
	"errors"
	"fmt"
	"os"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// envUnsetError is returned by env() for an unset variable without default.
type envUnsetError struct{ name string }

func (e *envUnsetError) Error() string {
	return fmt.Sprintf("environment variable %q is not set", e.name)
}

// evalContext returns the context every attribute is evaluated in: no
// variables, and the functions documented in the package comment.
func evalContext(lookup func(string) (string, bool)) *hcl.EvalContext {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	return &hcl.EvalContext{
		Functions: map[string]function.Function{
			"env":       envFunc(lookup),
			"format":    stdlib.FormatFunc,
			"join":      stdlib.JoinFunc,
			"concat":    stdlib.ConcatFunc,
			"lower":     stdlib.LowerFunc,
			"upper":     stdlib.UpperFunc,
			"trimspace": stdlib.TrimSpaceFunc,
			"min":       stdlib.MinFunc,
			"max":       stdlib.MaxFunc,
		},
	}
}

// envFunc is env(name) or env(name, default): the value of an environment
// variable. A variable that is set but empty yields "", not the default.
func envFunc(lookup func(string) (string, bool)) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the value of an environment variable, or the optional default if it is not set.",
		Params:      []function.Parameter{{Name: "name", Type: cty.String}},
		VarParam:    &function.Parameter{Name: "default", Type: cty.String},
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if len(args) > 2 {
				return cty.NilVal, function.NewArgErrorf(2, "env takes a name and at most one default")
			}
			name := args[0].AsString()
			if name == "" {
				return cty.NilVal, function.NewArgErrorf(0, "the variable name must not be empty")
			}
			if v, ok := lookup(name); ok {
				return cty.StringVal(v), nil
			}
			if len(args) == 2 {
				return args[1], nil
			}
			return cty.NilVal, &envUnsetError{name: name}
		},
	})
}

// rewriteEnvDiags turns HCL's generic "Error in function call" for an unset
// variable into a specific diagnostic covering the whole env(...) call.
func rewriteEnvDiags(diags hcl.Diagnostics) {
	for _, d := range diags {
		extra, ok := d.Extra.(hclsyntax.FunctionCallDiagExtra)
		if !ok {
			continue
		}
		var unset *envUnsetError
		if !errors.As(extra.FunctionCallError(), &unset) {
			continue
		}
		d.Summary = "Environment variable not set"
		d.Detail = fmt.Sprintf("This configuration reads the environment variable %q, which is not set. "+
			"Set it, or give a default as the second argument: env(%q, \"value\").", unset.name, unset.name)
		if d.Context != nil {
			d.Subject = d.Context
		}
		d.Expression, d.EvalContext = nil, nil
	}
}
