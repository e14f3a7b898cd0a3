package main

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/dllm-dev/dllm/internal/regfile"
)

// bindFlags declares one flag per field of the struct opts points to, named
// by the field's json tag and defaulting to its current value. usage gives
// the help text; fields without one are not exposed.
func bindFlags(fs *pflag.FlagSet, opts any, usage map[string]string) {
	v := reflect.ValueOf(opts).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		help, ok := usage[name]
		if !ok || name == "" || name == "-" {
			continue
		}
		p := v.Field(i).Addr().Interface()
		switch p := p.(type) {
		case *string:
			fs.StringVar(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *uint64:
			fs.Uint64Var(p, name, *p, help)
		case *float64:
			fs.Float64Var(p, name, *p, help)
		case *[]string:
			fs.StringSliceVar(p, name, *p, help)
		default:
			panic(fmt.Sprintf("bindFlags: field %s has an unsupported type", name))
		}
	}
}

// applyConfigFile sets every flag the command line did not set from a YAML
// or JSON file of flag-name: value pairs. Unknown names are errors, so a
// typo is not silently ignored.
func applyConfigFile(cmd *cobra.Command, path string, extra map[string]*string) error {
	raw, err := regfile.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config %s: %v", path, unwrapPathError(err))
	}
	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("--config %s: not valid YAML or JSON: %v", path, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val := m[k]
		if p, ok := extra[k]; ok {
			if *p == "" {
				*p = fmt.Sprint(val)
			}
			continue
		}
		f := cmd.Flags().Lookup(k)
		if f == nil {
			return fmt.Errorf("--config %s: unknown setting %q (settings are the flag names of '%s --help')", path, k, cmd.CommandPath())
		}
		if f.Changed {
			continue
		}
		var s string
		switch v := val.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, e := range v {
				parts[i] = fmt.Sprint(e)
			}
			s = strings.Join(parts, ",")
		case nil:
			continue
		default:
			s = fmt.Sprint(v)
		}
		if err := f.Value.Set(s); err != nil {
			return fmt.Errorf("--config %s: %s: %v", path, k, err)
		}
	}
	return nil
}
