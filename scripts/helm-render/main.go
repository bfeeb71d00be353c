// helm-render renders a Helm chart the way `helm template` does, for the
// checks in `make test`: Helm is not packaged for Debian, but Go, sprig
// (Helm's template function library) and go-yaml are, and they build
// offline (GO111MODULE=off GOPATH=/usr/share/gocode).
//
//	helm-render [-f VALUES]... [--name NAME] [--namespace NS]
//	            [--kube-version v1.28.0] [--api-versions a/v1,b/v2] [--notes] CHART
//
// What it reproduces of Helm 3, because the chart relies on it:
//   - values: the chart's values.yaml, then each -f file coalesced over it
//     (maps merge key by key, a null removes the default), and every value
//     decoded through JSON as Helm does, so numbers are float64 (print them
//     with int or toYaml, as in real Helm);
//   - the template set: every file under templates/ parsed into one set
//     named CHART/templates/PATH, with sprig's functions minus env and
//     expandenv, plus Helm's include, tpl, required, toYaml, fromYaml,
//     toJson, fromJson and lookup (always empty, as in `helm template`);
//     missing keys render as empty, not "<no value>";
//   - the data: .Values, .Release (Name, Namespace, Service, IsInstall,
//     IsUpgrade, Revision), .Chart (Chart.yaml's fields), .Capabilities
//     (KubeVersion, APIVersions.Has) and .Template (Name, BasePath);
//   - the output: files whose name starts with "_" and NOTES.txt are not
//     manifests; every other .yaml/.yml/.json file is split into documents,
//     each must parse as YAML, empty ones are dropped, and they are printed
//     in Helm's install order of kinds with "# Source:" headers.
//
// Not implemented, so the chart must not use them: .Files, subcharts and
// dependencies, toToml, --set, hooks, schema validation, Chart.yaml's
// kubeVersion constraint.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

// Metadata is Chart.yaml, with the field names templates use (.Chart.Name).
type Metadata struct {
	APIVersion   string            `yaml:"apiVersion"`
	Name         string            `yaml:"name"`
	Version      string            `yaml:"version"`
	AppVersion   string            `yaml:"appVersion"`
	KubeVersion  string            `yaml:"kubeVersion"`
	Description  string            `yaml:"description"`
	Type         string            `yaml:"type"`
	Home         string            `yaml:"home"`
	Icon         string            `yaml:"icon"`
	Keywords     []string          `yaml:"keywords"`
	Sources      []string          `yaml:"sources"`
	Annotations  map[string]string `yaml:"annotations"`
	Deprecated   bool              `yaml:"deprecated"`
	Maintainers  []interface{}     `yaml:"maintainers"`
	Dependencies []interface{}     `yaml:"dependencies"`
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct {
	Version, Major, Minor string
}

func (k KubeVersion) String() string     { return k.Version }
func (k KubeVersion) GitVersion() string { return k.Version }

// APIVersions is .Capabilities.APIVersions.
type APIVersions []string

// Has says whether an API version ("policy/v1") or a kind in one
// ("policy/v1/PodDisruptionBudget") is available.
func (a APIVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

// Capabilities is .Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions APIVersions
}

// The API versions `helm template` assumes without a cluster (Helm's
// DefaultVersionSet is client-go's built-in groups); --api-versions adds.
var defaultAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v1", "autoscaling/v2",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "coordination.k8s.io/v1", "scheduling.k8s.io/v1",
}

// Helm's InstallOrder (pkg/releaseutil/kind_sorter.go); other kinds follow,
// by kind name.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
	"PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
	"ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding",
	"RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
}

const recursionMax = 1000 // Helm's limit on nested includes of one name

type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var files fileList
	name := flag.String("name", "rankd", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.28.0", "Kubernetes version for .Capabilities")
	apiVersions := flag.String("api-versions", "", "extra API versions for .Capabilities, comma-separated")
	notes := flag.Bool("notes", false, "print the rendered NOTES.txt instead of the manifests")
	flag.Var(&files, "f", "values file (repeatable; later files win)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: helm-render [-f VALUES]... [--name NAME] [--namespace NS] "+
			"[--kube-version V] [--api-versions A,B] [--notes] CHART\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), files, *name, *namespace, *kubeVersion, *apiVersions, *notes)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

// ---- values ---------------------------------------------------------------

// readValues decodes YAML the way Helm does (sigs.k8s.io/yaml: YAML to
// JSON to Go), so that templates see the same types as under Helm.
func readValues(path string) (map[string]interface{}, error) {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var raw interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if raw == nil {
		return map[string]interface{}{}, nil
	}
	v, err := viaJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: values must be a mapping", path)
	}
	return m, nil
}

// jsonable turns go-yaml's map[interface{}]interface{} into string-keyed maps.
func jsonable(v interface{}) (interface{}, error) {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			c, err := jsonable(x)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = c
		}
		return m, nil
	case []interface{}:
		l := make([]interface{}, len(t))
		for i, x := range t {
			c, err := jsonable(x)
			if err != nil {
				return nil, err
			}
			l[i] = c
		}
		return l, nil
	default:
		return v, nil
	}
}

func viaJSON(v interface{}) (interface{}, error) {
	c, err := jsonable(v)
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var out interface{}
	err = json.Unmarshal(j, &out)
	return out, err
}

// coalesce puts over on top of base as Helm's CoalesceTables does: maps
// merge recursively, a null in over deletes the key, anything else replaces.
func coalesce(base, over map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(base))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		bm, bok := out[k].(map[string]interface{})
		om, ook := v.(map[string]interface{})
		if bok && ook {
			out[k] = coalesce(bm, om)
		} else {
			out[k] = v
		}
	}
	return out
}

// ---- Helm's functions -------------------------------------------------------

// toYAML is Helm's toYaml: through JSON (sigs.k8s.io/yaml), keys sorted,
// the final newline trimmed; "" when the value cannot be marshalled.
func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return ""
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	var raw interface{}
	if err := yaml.Unmarshal([]byte(s), &raw); err != nil {
		m["Error"] = err.Error()
		return m
	}
	v, err := viaJSON(raw)
	if err != nil {
		m["Error"] = err.Error()
		return m
	}
	if vm, ok := v.(map[string]interface{}); ok {
		return vm
	}
	return m
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// required is Helm's: an error when the value is nil or an empty string.
func required(msg string, v interface{}) (interface{}, error) {
	if v == nil {
		return v, errors.New(msg)
	}
	if s, ok := v.(string); ok && s == "" {
		return v, errors.New(msg)
	}
	return v, nil
}

// funcMap is sprig's text functions with Helm's changes: env and expandenv
// removed (a render must not depend on the machine), Helm's own added.
// include and tpl need the template set, so they are bound per render.
func funcMap(t **template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = toYAML
	f["fromYaml"] = fromYAML
	f["toJson"] = toJSON
	f["fromJson"] = fromJSON
	f["required"] = required
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	included := map[string]int{}
	f["include"] = func(name string, data interface{}) (string, error) {
		if included[name] > recursionMax {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		included[name]++
		defer func() { included[name]-- }()
		var buf strings.Builder
		err := (*t).ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := (*t).Clone()
		if err != nil {
			return "", err
		}
		name := "tpl"
		if vals, ok := data.(map[string]interface{}); ok {
			if tm, ok := vals["Template"].(map[string]interface{}); ok {
				if n, ok := tm["Name"].(string); ok {
					name = n
				}
			}
		}
		nt, err := c.New(name).Parse(text)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %v", text, err)
		}
		var buf strings.Builder
		if err := nt.Execute(&buf, data); err != nil {
			return "", fmt.Errorf("error calling tpl: %v", err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	return f
}

// ---- rendering ------------------------------------------------------------

type doc struct {
	source, kind, text string
	order              int
}

var docSep = regexp.MustCompile(`(?:^|\s*\n)---\s*`) // Helm's SplitManifests

func kindRank(kind string) int {
	for i, k := range installOrder {
		if k == kind {
			return i
		}
	}
	return len(installOrder)
}

func render(chartDir string, valueFiles []string, name, namespace, kubeVersion, extraAPIs string,
	notes bool) (string, error) {
	var meta Metadata
	data, err := ioutil.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	if err := yaml.UnmarshalStrict(data, &meta); err != nil {
		return "", fmt.Errorf("Chart.yaml: %v", err)
	}
	if meta.APIVersion != "v2" || meta.Name == "" || meta.Version == "" {
		return "", errors.New("Chart.yaml: apiVersion v2, name and version are required")
	}
	values, err := readValues(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, f := range valueFiles {
		over, err := readValues(f)
		if err != nil {
			return "", err
		}
		values = coalesce(values, over)
	}

	kv := strings.TrimPrefix(kubeVersion, "v")
	parts := strings.SplitN(kv, ".", 3)
	if len(parts) < 2 {
		return "", fmt.Errorf("--kube-version %q: expected vMAJOR.MINOR[.PATCH]", kubeVersion)
	}
	apis := append(APIVersions{}, defaultAPIVersions...)
	for _, a := range strings.Split(extraAPIs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			apis = append(apis, a)
		}
	}
	caps := &Capabilities{KubeVersion{"v" + kv, parts[0], parts[1]}, apis}
	release := map[string]interface{}{
		"Name": name, "Namespace": namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1,
	}

	// Every file under templates/, named as Helm names them.
	var paths []string
	tdir := filepath.Join(chartDir, "templates")
	err = filepath.Walk(tdir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			paths = append(paths, p)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	sort.Strings(paths)
	var t *template.Template
	t = template.New("gotpl").Option("missingkey=zero").Funcs(funcMap(&t))
	names := make([]string, len(paths))
	for i, p := range paths {
		rel, _ := filepath.Rel(chartDir, p)
		names[i] = meta.Name + "/" + filepath.ToSlash(rel)
		src, err := ioutil.ReadFile(p)
		if err != nil {
			return "", err
		}
		if _, err := t.New(names[i]).Parse(string(src)); err != nil {
			return "", fmt.Errorf("parse error in %s", strings.TrimPrefix(err.Error(), "template: "))
		}
	}

	var docs []doc
	var notesOut string
	for i, n := range names {
		base := filepath.Base(n)
		isNotes := base == "NOTES.txt"
		manifest := strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".json")
		if strings.HasPrefix(base, "_") || (!isNotes && !manifest) {
			continue
		}
		vals := map[string]interface{}{
			"Values": values, "Release": release, "Chart": &meta, "Capabilities": caps,
			"Template": map[string]interface{}{"Name": n, "BasePath": meta.Name + "/templates"},
		}
		var buf bytes.Buffer
		if err := t.ExecuteTemplate(&buf, n, vals); err != nil {
			return "", fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "template: "))
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if isNotes {
			notesOut = text
			continue
		}
		for _, d := range docSep.Split(text, -1) {
			if strings.TrimSpace(d) == "" {
				continue
			}
			var head struct {
				Kind string `yaml:"kind"`
			}
			if err := yaml.Unmarshal([]byte(d), &head); err != nil {
				return "", fmt.Errorf("YAML parse error on %s: %v", n, err)
			}
			docs = append(docs, doc{n, head.Kind, strings.TrimSpace(d), i})
		}
	}
	if notes {
		return notesOut, nil
	}
	sort.SliceStable(docs, func(a, b int) bool {
		ra, rb := kindRank(docs[a].kind), kindRank(docs[b].kind)
		if ra != rb {
			return ra < rb
		}
		if ra == len(installOrder) && docs[a].kind != docs[b].kind {
			return docs[a].kind < docs[b].kind
		}
		return docs[a].order < docs[b].order
	})
	var out strings.Builder
	for _, d := range docs {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", d.source, d.text)
	}
	return out.String(), nil
}
