/* tests/check_helm.c — the Helm chart in helm/rankd, rendered by
 * scripts/helm-render (Helm's own rendering, which Debian does not
 * package): with the default values and with the GPU + HPA and GPU + KEDA
 * values files of helm/rankd/ci (and the A/B one), every document must parse as YAML
 * (libyaml) with the expected kinds and the settings an operator relies
 * on; the ConfigMap's rankd.yaml must pass `rankd check-config`, with the
 * Deployment's environment applied, so that every RANKD_ variable the
 * chart sets is a real key. Values that would deploy a broken pod must be
 * refused at render time. A small fixture chart pins the renderer's Helm
 * behaviour.
 *
 * The renderer is $RANKD_HELM_RENDER, else build/helm-render (the Makefile
 * builds it); rankd is $RANKD_BIN, else build/rankd. Suites run from the
 * repository root. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <yaml.h>

#include "tests/testutil.h"

#define CHART "helm/rankd"
#define CI_HPA CHART "/ci/gpu-hpa-values.yaml"
#define CI_KEDA CHART "/ci/gpu-keda-values.yaml"
#define CI_AB CHART "/ci/ab-values.yaml"
#define MAX_DOCS 32
#define OUT_BYTES (1 << 20)

static const char *bin(const char *var, const char *dflt)
{
    const char *b = getenv(var);
    return b && *b ? b : dflt;
}

/* Runs a shell command, stdout and stderr together into out; returns the
 * exit status (-1 when it did not exit). */
static int sh(char *out, size_t outsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sh(char *out, size_t outsz, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_msg(p != NULL, "popen %s", cmd);
    size_t n = fread(out, 1, outsz - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- a rendered release: its documents, parsed ----------------------------------- */

typedef struct release {
    char *text;
    yaml_document_t docs[MAX_DOCS];
    int n;
} release;

static void release_free(release *r)
{
    for (int i = 0; i < r->n; i++)
        yaml_document_delete(&r->docs[i]);
    free(r->text);
}

/* Renders the chart with `values` (a string of -f options, may be "");
 * fails the test unless the renderer succeeds and every document parses. */
static void render(release *r, const char *values)
{
    memset(r, 0, sizeof *r);
    r->text = malloc(OUT_BYTES);
    ck_assert_ptr_nonnull(r->text);
    int rc = sh(r->text, OUT_BYTES, "%s %s %s", bin("RANKD_HELM_RENDER", "build/helm-render"), values, CHART);
    ck_assert_msg(rc == 0, "helm-render %s exited %d:\n%s", values, rc, r->text);
    yaml_parser_t p;
    ck_assert(yaml_parser_initialize(&p));
    yaml_parser_set_input_string(&p, (const unsigned char *)r->text, strlen(r->text));
    for (;;) {
        ck_assert_msg(r->n < MAX_DOCS, "more than %d documents", MAX_DOCS);
        yaml_document_t *d = &r->docs[r->n];
        ck_assert_msg(yaml_parser_load(&p, d), "rendered YAML does not parse (%s, line %zu):\n%s",
                      p.problem ? p.problem : "?", p.problem_mark.line + 1, r->text);
        if (!yaml_document_get_root_node(d)) { /* the end of the stream */
            yaml_document_delete(d);
            break;
        }
        r->n++;
    }
    yaml_parser_delete(&p);
    printf("helm-render %s: %d documents\n", *values ? values : "(default values)", r->n);
}

/* The node under `root` at a path of mapping keys and, for sequences,
 * indexes written as decimal strings; NULL-terminated. NULL if absent. */
static yaml_node_t *vat(yaml_document_t *d, yaml_node_t *n, va_list ap)
{
    for (const char *k; n && (k = va_arg(ap, const char *));) {
        yaml_node_t *next = NULL;
        if (n->type == YAML_MAPPING_NODE) {
            for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
                yaml_node_t *key = yaml_document_get_node(d, pr->key);
                if (key->type == YAML_SCALAR_NODE && !strcmp((char *)key->data.scalar.value, k)) {
                    next = yaml_document_get_node(d, pr->value);
                    break;
                }
            }
        } else if (n->type == YAML_SEQUENCE_NODE) {
            long i = strtol(k, NULL, 10);
            yaml_node_item_t *it = n->data.sequence.items.start + i;
            if (i >= 0 && it < n->data.sequence.items.top)
                next = yaml_document_get_node(d, *it);
        }
        n = next;
    }
    return n;
}

static yaml_node_t *at(yaml_document_t *d, yaml_node_t *n, ...)
{
    va_list ap;
    va_start(ap, n);
    yaml_node_t *r = vat(d, n, ap);
    va_end(ap);
    return r;
}

/* The scalar at a path from the document's root, or NULL. */
static const char *str(yaml_document_t *d, ...)
{
    va_list ap;
    va_start(ap, d);
    yaml_node_t *n = vat(d, yaml_document_get_root_node(d), ap);
    va_end(ap);
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static const char *kind(yaml_document_t *d) { return str(d, "kind", NULL); }

/* The only document of a kind; fails the test when there is not exactly one. */
static yaml_document_t *one(release *r, const char *k)
{
    yaml_document_t *found = NULL;
    for (int i = 0; i < r->n; i++)
        if (kind(&r->docs[i]) && !strcmp(kind(&r->docs[i]), k)) {
            ck_assert_msg(!found, "two %s documents", k);
            found = &r->docs[i];
        }
    ck_assert_msg(found != NULL, "no %s document in:\n%s", k, r->text);
    return found;
}

static int count(release *r, const char *k)
{
    int c = 0;
    for (int i = 0; i < r->n; i++)
        c += kind(&r->docs[i]) && !strcmp(kind(&r->docs[i]), k);
    return c;
}

/* The kinds, in the order rendered (Helm's install order), space-separated. */
static void kinds(release *r, char *out, size_t outsz)
{
    size_t o = 0;
    out[0] = '\0';
    for (int i = 0; i < r->n && o < outsz; i++)
        o += (size_t)snprintf(out + o, outsz - o, "%s%s", i ? " " : "", kind(&r->docs[i]) ? kind(&r->docs[i]) : "?");
}

#define EXPECT_STR(got, want, what)                                                                    \
    do {                                                                                               \
        const char *g_ = (got);                                                                        \
        ck_assert_msg(g_ && !strcmp(g_, (want)), "%s: expected \"%s\", got %s%s%s", (what), (want),   \
                      g_ ? "\"" : "", g_ ? g_ : "nothing", g_ ? "\"" : "");                            \
    } while (0)

#define C0 "spec", "template", "spec", "containers", "0"

/* What every rendering must hold: the pod's security, probes, config
 * mount, and the Service's port. */
static void check_pod(release *r)
{
    yaml_document_t *dep = one(r, "Deployment");
    EXPECT_STR(str(dep, "spec", "template", "spec", "securityContext", "runAsNonRoot", NULL), "true",
               "pod runAsNonRoot");
    EXPECT_STR(str(dep, C0, "securityContext", "runAsNonRoot", NULL), "true", "runAsNonRoot");
    EXPECT_STR(str(dep, C0, "securityContext", "readOnlyRootFilesystem", NULL), "true", "readOnlyRootFilesystem");
    EXPECT_STR(str(dep, C0, "securityContext", "allowPrivilegeEscalation", NULL), "false", "allowPrivilegeEscalation");
    EXPECT_STR(str(dep, C0, "securityContext", "capabilities", "drop", "0", NULL), "ALL", "capabilities.drop");
    EXPECT_STR(str(dep, C0, "livenessProbe", "httpGet", "path", NULL), "/healthz", "liveness path");
    EXPECT_STR(str(dep, C0, "startupProbe", "httpGet", "path", NULL), "/healthz", "startup path");
    EXPECT_STR(str(dep, C0, "readinessProbe", "httpGet", "path", NULL), "/readyz", "readiness path");
    EXPECT_STR(str(dep, C0, "livenessProbe", "httpGet", "port", NULL), "http", "liveness port");
    EXPECT_STR(str(dep, C0, "ports", "0", "name", NULL), "http", "container port name");
    EXPECT_STR(str(dep, C0, "ports", "0", "containerPort", NULL), "8080", "containerPort (config.http.port)");
    EXPECT_STR(str(dep, C0, "args", "2", NULL), "/etc/rankd/rankd.yaml", "--config");
    EXPECT_STR(str(dep, C0, "volumeMounts", "0", "mountPath", NULL), "/etc/rankd", "config mount");
    EXPECT_STR(str(dep, C0, "volumeMounts", "1", "readOnly", NULL), "true", "model mount read-only");
    EXPECT_STR(str(dep, C0, "volumeMounts", "2", "mountPath", NULL), "/tmp", "the writable /tmp");
    yaml_document_t *cm = one(r, "ConfigMap");
    EXPECT_STR(str(dep, "spec", "template", "spec", "volumes", "0", "configMap", "name", NULL),
               str(cm, "metadata", "name", NULL), "config volume names the ConfigMap");
    yaml_document_t *svc = one(r, "Service");
    EXPECT_STR(str(svc, "spec", "ports", "0", "targetPort", NULL), "http", "Service targetPort");
    EXPECT_STR(str(svc, "spec", "selector", "app.kubernetes.io/name", NULL),
               str(dep, "spec", "selector", "matchLabels", "app.kubernetes.io/name", NULL), "Service selector");
}

/* ---- the ConfigMap against rankd check-config ---------------------------------- */

/* Writes the ConfigMap's rankd.yaml to the scratch directory as `name`. */
static void write_config(release *r, const char *name, char path[TU_PATH])
{
    const char *cfg = str(one(r, "ConfigMap"), "data", "rankd.yaml", NULL);
    ck_assert_msg(cfg && *cfg, "the ConfigMap has no data.rankd.yaml");
    tu_tmp_path(path, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(cfg, f);
    fclose(f);
}

/* The container's environment as the kubelet would give it: a
 * secretKeyRef becomes "s-<secret>-<key>" (a made-up secret), $(VAR)
 * expands from the variables before it. Each entry is "NAME=value". */
static int pod_env(release *r, char env[][512], int max)
{
    yaml_document_t *d = one(r, "Deployment");
    int n = 0;
    for (int i = 0;; i++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%d", i);
        const char *name = str(d, C0, "env", idx, "name", NULL);
        if (!name)
            break;
        ck_assert_int_lt(n, max);
        const char *v = str(d, C0, "env", idx, "value", NULL);
        char raw[512];
        if (v) {
            snprintf(raw, sizeof raw, "%s", v);
        } else {
            const char *sn = str(d, C0, "env", idx, "valueFrom", "secretKeyRef", "name", NULL);
            const char *sk = str(d, C0, "env", idx, "valueFrom", "secretKeyRef", "key", NULL);
            ck_assert_msg(sn && sk, "env %s: neither a value nor a secretKeyRef", name);
            snprintf(raw, sizeof raw, "s-%s-%s", sn, sk);
        }
        size_t o = (size_t)snprintf(env[n], 512, "%s=", name);
        for (const char *p = raw; *p && o < 511;) {
            const char *close = p[0] == '$' && p[1] == '(' ? strchr(p, ')') : NULL;
            int done = 0;
            for (int j = 0; close && j < n && !done; j++) {
                size_t len = strcspn(env[j], "=");
                if (len == (size_t)(close - p - 2) && !strncmp(env[j], p + 2, len)) {
                    size_t vlen = strlen(env[j] + len + 1); /* j < n: another row */
                    vlen = vlen < 511 - o ? vlen : 511 - o;
                    memcpy(env[n] + o, env[j] + len + 1, vlen);
                    o += vlen;
                    p = close + 1;
                    done = 1;
                }
            }
            if (!done)
                env[n][o++] = *p++;
            env[n][o] = '\0';
        }
        n++;
    }
    return n;
}

static char check_out[65536], base_out[65536];

/* rankd check-config on the rendered file: with no variables, then with the
 * pod's, then with each RANKD_ one alone (each must change the effective
 * config: a variable rankd does not read would be a silent misconfig). */
static void check_config(release *r, const char *name)
{
    char path[TU_PATH], env[32][512], cmd[8192];
    write_config(r, name, path);
    const char *rankd = bin("RANKD_BIN", "build/rankd");
    int rc = sh(base_out, sizeof base_out, "env -u RANKD_KAFKA_PROPERTIES %s check-config %s", rankd, path);
    ck_assert_msg(rc == 0, "rankd check-config on the rendered %s exited %d:\n%s", name, rc, base_out);
    ck_assert_msg(strstr(base_out, "bind: \"0.0.0.0\""), "%s", base_out);
    int n = pod_env(r, env, 32);
    size_t o = (size_t)snprintf(cmd, sizeof cmd, "env");
    for (int i = 0; i < n; i++)
        o += (size_t)snprintf(cmd + o, sizeof cmd - o, " '%s'", env[i]);
    snprintf(cmd + o, sizeof cmd - o, " %s check-config %s", rankd, path);
    rc = sh(check_out, sizeof check_out, "%s", cmd);
    ck_assert_msg(rc == 0, "rankd check-config with the pod's environment exited %d:\n%s\n%s", rc, cmd, check_out);
    for (int i = 0; i < n; i++) {
        if (strncmp(env[i], "RANKD_", 6))
            continue;
        rc = sh(check_out, sizeof check_out, "env '%s' %s check-config %s", env[i], rankd, path);
        ck_assert_msg(rc == 0, "check-config with %s exited %d:\n%s", env[i], rc, check_out);
        ck_assert_msg(strcmp(strstr(check_out, "\n"), strstr(base_out, "\n")) != 0,
                      "%.*s changes nothing in the effective config: not a key rankd reads",
                      (int)strcspn(env[i], "="), env[i]);
        printf("%.*s is read by rankd\n", (int)strcspn(env[i], "="), env[i]);
    }
}

/* ---- the renderings --------------------------------------------------------------- */

START_TEST(test_default_values)
{
    release r;
    char k[512];
    render(&r, "");
    kinds(&r, k, sizeof k);
    EXPECT_STR(k, "PodDisruptionBudget ServiceAccount ConfigMap Service Deployment", "kinds");
    check_pod(&r);
    yaml_document_t *dep = one(&r, "Deployment");
    EXPECT_STR(str(dep, "spec", "replicas", NULL), "2", "replicas");
    ck_assert_msg(!str(dep, C0, "resources", "limits", "nvidia.com/gpu", NULL), "a GPU is requested by default");
    ck_assert_msg(!at(dep, yaml_document_get_root_node(dep), "spec", "template", "spec", "initContainers", NULL),
                  "an init container by default");
    ck_assert_msg(!at(dep, yaml_document_get_root_node(dep), C0, "env", "2", NULL),
                  "secrets in the environment by default");
    EXPECT_STR(str(dep, "spec", "template", "spec", "volumes", "1", "persistentVolumeClaim", "claimName", NULL),
               "rankd-models", "model claim");
    check_config(&r, "default.yaml");
    ck_assert_msg(strstr(base_out, "path: \"/models/ranker-v1-student.int8.safetensors\""), "%s", base_out);
    release_free(&r);
}
END_TEST

START_TEST(test_gpu_hpa_values)
{
    release r;
    char k[512];
    render(&r, "-f " CI_HPA);
    kinds(&r, k, sizeof k);
    EXPECT_STR(k, "PodDisruptionBudget ServiceAccount ConfigMap Service Deployment HorizontalPodAutoscaler "
                  "ServiceMonitor", "kinds");
    check_pod(&r);
    yaml_document_t *dep = one(&r, "Deployment"), *hpa = one(&r, "HorizontalPodAutoscaler");
    ck_assert_msg(!str(dep, "spec", "replicas", NULL), "replicas set while the HPA owns them");
    EXPECT_STR(str(dep, C0, "resources", "limits", "nvidia.com/gpu", NULL), "1", "GPU limit");
    EXPECT_STR(str(dep, "spec", "template", "spec", "tolerations", "0", "key", NULL), "nvidia.com/gpu", "toleration");
    EXPECT_STR(str(dep, "spec", "template", "spec", "runtimeClassName", NULL), "nvidia", "runtimeClassName");
    EXPECT_STR(str(dep, "spec", "template", "spec", "initContainers", "0", "securityContext",
                   "readOnlyRootFilesystem", NULL), "true", "init container read-only root");
    EXPECT_STR(str(dep, "spec", "template", "spec", "volumes", "1", "emptyDir", "sizeLimit", NULL), "2Gi",
               "model emptyDir");
    EXPECT_STR(str(hpa, "spec", "scaleTargetRef", "name", NULL), str(dep, "metadata", "name", NULL), "HPA target");
    EXPECT_STR(str(hpa, "spec", "maxReplicas", NULL), "24", "HPA maxReplicas");
    yaml_document_t *sm = one(&r, "ServiceMonitor");
    EXPECT_STR(str(sm, "spec", "endpoints", "0", "path", NULL), "/metrics", "ServiceMonitor path");
    EXPECT_STR(str(sm, "spec", "endpoints", "0", "port", NULL), "http", "ServiceMonitor port");
    check_config(&r, "gpu-hpa.yaml");
    ck_assert_msg(strstr(check_out, "device: \"cuda\""), "%s", check_out);
    /* the last run had one secret variable alone; the full set, once more */
    char env[32][512];
    int n = pod_env(&r, env, 32);
    ck_assert_int_ge(n, 5);
    ck_assert_msg(!strcmp(env[2], "RANKD_KAFKA_PROPERTIES=sasl.username=s-rankd-kafka-username,"
                                  "sasl.password=s-rankd-kafka-password"), "%s", env[2]);
    release_free(&r);
}
END_TEST

START_TEST(test_gpu_keda_values)
{
    release r;
    char k[512];
    render(&r, "-f " CI_HPA " -f " CI_KEDA);
    kinds(&r, k, sizeof k);
    EXPECT_STR(k, "PodDisruptionBudget ServiceAccount ConfigMap Service Deployment ScaledObject ServiceMonitor "
                  "TriggerAuthentication", "kinds");
    check_pod(&r);
    ck_assert_int_eq(count(&r, "HorizontalPodAutoscaler"), 0);
    yaml_document_t *so = one(&r, "ScaledObject"), *ta = one(&r, "TriggerAuthentication");
    ck_assert_msg(!str(one(&r, "Deployment"), "spec", "replicas", NULL), "replicas set while KEDA owns them");
#define TRIG(...) str(so, "spec", "triggers", "0", __VA_ARGS__, NULL)
    EXPECT_STR(TRIG("type"), "kafka", "trigger type");
    EXPECT_STR(TRIG("metadata", "consumerGroup"), "rankd-prod", "consumerGroup (config.kafka.group_id)");
    EXPECT_STR(TRIG("metadata", "topic"), "user-behaviour.v1", "topic (config.kafka.input_topic)");
    EXPECT_STR(TRIG("metadata", "lagThreshold"), "20000", "lagThreshold");
    EXPECT_STR(TRIG("metadata", "sasl"), "scram_sha512", "sasl from sasl.mechanism");
    EXPECT_STR(TRIG("metadata", "tls"), "enable", "tls from security.protocol");
    EXPECT_STR(TRIG("authenticationRef", "name"), str(ta, "metadata", "name", NULL), "authenticationRef");
    EXPECT_STR(str(ta, "spec", "secretTargetRef", "1", "parameter", NULL), "password", "TriggerAuthentication");
    EXPECT_STR(str(ta, "spec", "secretTargetRef", "2", "name", NULL), "rankd-kafka-ca", "CA secret");
    check_config(&r, "gpu-keda.yaml");
    release_free(&r);
}
END_TEST

/* An A/B test: variant b's keys reach rankd as keys it reads, and the
 * default polls for reloads. */
START_TEST(test_ab_values)
{
    release r;
    render(&r, "-f " CI_AB);
    check_pod(&r);
    check_config(&r, "ab.yaml");
    ck_assert_msg(strstr(base_out, "b.path: \"/models/ranker-v2-student.int8.safetensors\"") &&
                  strstr(base_out, "b.percent: 10") && strstr(base_out, "reload_check_ms: 5000"),
                  "%s", base_out);
    release_free(&r);
    char out[8192];
    int rc = sh(out, sizeof out, "%s --notes -f %s %s", bin("RANKD_HELM_RENDER", "build/helm-render"), CI_AB, CHART);
    ck_assert_msg(rc == 0 && strstr(out, "ranks 10% of users") && strstr(out, "kill -HUP 1"), "NOTES.txt:\n%s", out);
}
END_TEST

START_TEST(test_notes)
{
    char out[8192];
    int rc = sh(out, sizeof out, "%s --notes -f %s -f %s %s", bin("RANKD_HELM_RENDER", "build/helm-render"),
                CI_HPA, CI_KEDA, CHART);
    ck_assert_msg(rc == 0 && strstr(out, "KEDA, 20000 messages of lag per replica") &&
                  strstr(out, "port-forward svc/rankd 8080:8080"), "NOTES.txt:\n%s", out);
}
END_TEST

/* ---- values that must be refused ---------------------------------------------------- */

static const struct {
    const char *values, *message;
} refused[] = {
    {"autoscaling: {enabled: true}\nkeda: {enabled: true}\n", "pick one"},
    {"config: {http: {bind: 127.0.0.1}}\n", "config.http.bind must be \"0.0.0.0\""},
    {"config: {http: {enabled: false}}\n", "config.http.enabled must be true"},
    {"config: {model: {path: /data/m.safetensors}}\n", "must be a file under model.mountPath"},
    {"config: {model: {b: {path: /data/b.safetensors, percent: 5}}}\n",
     "config.model.b.path \"/data/b.safetensors\" must be a file under model.mountPath"},
    {"config: {model: {b: {percent: 5}}}\n", "config.model.b.percent is 5 but config.model.b.path is empty"},
    {"config: {redis: {password: hunter2}}\n", "secrets.redis.existingSecret"},
    {"config: {http: {token: t0ken}}\n", "secrets.http.existingSecret"},
    {"config: {kafka: {properties: {sasl.password: x}}}\n", "config.kafka.properties.sasl.password is a secret"},
    {"model: {source: emptyDir}\n", "model.init.image is required"},
    {"model: {source: hostPath}\n", "model.source must be pvc or emptyDir"},
    {"model: {pvc: {existingClaim: \"\"}}\n", "model.pvc.existingClaim is required"},
    {"image: {repository: \"\"}\n", "image.repository is required"},
    {"secrets: {kafka: {sasl: {enabled: true}}}\n", "secrets.kafka.sasl.existingSecret is required"},
};

START_TEST(test_refused)
{
    char path[TU_PATH], out[8192], name[32];
    snprintf(name, sizeof name, "refused-%d.yaml", _i);
    tu_tmp_path(path, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(refused[_i].values, f);
    fclose(f);
    int rc = sh(out, sizeof out, "%s -f %s %s", bin("RANKD_HELM_RENDER", "build/helm-render"), path, CHART);
    ck_assert_msg(rc != 0 && strstr(out, refused[_i].message), "values:\n%swant a refusal saying '%s'; exit %d:\n%.2000s",
                  refused[_i].values, refused[_i].message, rc, out);
}
END_TEST

/* The check is real: a key rankd does not know, passed through the chart,
 * is caught by check-config with its line. */
START_TEST(test_unknown_key_caught)
{
    char path[TU_PATH], cfg[TU_PATH], out[8192];
    tu_tmp_path(path, "unknown.yaml");
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("config: {kafka: {pol_batch: 10}}\n", f);
    fclose(f);
    release r;
    char values[TU_PATH + 8];
    snprintf(values, sizeof values, "-f %s", path);
    render(&r, values);
    write_config(&r, "unknown-rendered.yaml", cfg);
    int rc = sh(out, sizeof out, "%s check-config %s", bin("RANKD_BIN", "build/rankd"), cfg);
    ck_assert_msg(rc == 1 && strstr(out, "kafka.pol_batch: unknown key (did you mean kafka.poll_batch?)"),
                  "exit %d: %s", rc, out);
    release_free(&r);
}
END_TEST

/* ---- the renderer itself ------------------------------------------------------------- */

/* The fixture chart exercises include, tpl, required, toYaml, a values
 * file with a null, Helm's float64 numbers, missing keys, .Release,
 * .Chart, .Capabilities, .Template, document splitting and kind order. */
START_TEST(test_renderer_fixture)
{
    static char out[65536], want[65536];
    const char *dir = "tests/corpus/helm";
    int rc = sh(out, sizeof out, "%s --name rel --namespace ns -f %s/fixture/override.yaml %s/fixture",
                bin("RANKD_HELM_RENDER", "build/helm-render"), dir, dir);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    char path[TU_PATH];
    snprintf(path, sizeof path, "%s/fixture.expected", dir);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s", path);
    size_t n = fread(want, 1, sizeof want - 1, f);
    want[n] = '\0';
    fclose(f);
    ck_assert_msg(!strcmp(out, want), "rendered:\n%s\nexpected (%s):\n%s", out, path, want);
    rc = sh(out, sizeof out, "%s --notes --name rel %s/fixture", bin("RANKD_HELM_RENDER", "build/helm-render"), dir);
    ck_assert_msg(rc == 0 && !strcmp(out, "notes for fixture-rel\n"), "notes: %s", out);
}
END_TEST

/* A template that renders invalid YAML, or calls a function the renderer
 * (like Helm) does not have, is an error naming the template. */
START_TEST(test_renderer_errors)
{
    char out[8192];
    const char *root = tu_tmp_root();
    int rc = sh(out, sizeof out,
                "mkdir -p %s/bad/templates && printf 'apiVersion: v2\\nname: bad\\nversion: 0.0.1\\n' > %s/bad/Chart.yaml"
                " && : > %s/bad/values.yaml && printf 'a: [\\n' > %s/bad/templates/x.yaml && %s %s/bad",
                root, root, root, root, bin("RANKD_HELM_RENDER", "build/helm-render"), root);
    ck_assert_msg(rc == 1 && strstr(out, "YAML parse error on bad/templates/x.yaml"), "exit %d: %s", rc, out);
    rc = sh(out, sizeof out, "printf '{{ env \"HOME\" }}\\n' > %s/bad/templates/x.yaml && %s %s/bad", root,
            bin("RANKD_HELM_RENDER", "build/helm-render"), root);
    ck_assert_msg(rc == 1 && strstr(out, "function \"env\" not defined"), "exit %d: %s", rc, out);
    sh(out, sizeof out, "rm -r %s/bad", root);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("helm");
    TCase *tc = tcase_create("chart");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_default_values);
    tcase_add_test(tc, test_gpu_hpa_values);
    tcase_add_test(tc, test_gpu_keda_values);
    tcase_add_test(tc, test_ab_values);
    tcase_add_test(tc, test_notes);
    tcase_add_loop_test(tc, test_refused, 0, (int)(sizeof refused / sizeof refused[0]));
    tcase_add_test(tc, test_unknown_key_caught);
    suite_add_tcase(s, tc);
    TCase *tr = tcase_create("renderer");
    tcase_add_test(tr, test_renderer_fixture);
    tcase_add_test(tr, test_renderer_errors);
    suite_add_tcase(s, tr);
    return s;
}

int main(void) { return tu_main("check_helm", suite()); }
