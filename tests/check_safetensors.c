/* tests/check_safetensors.c — the safetensors reader and writer.
 *
 * Every corruption the reader promises to catch has a case here that checks
 * the failure and its message (the file name first, then a fragment that
 * says what is wrong), both through lm_st_open on a file and through
 * lm_st_open_mem on the same bytes. A seeded mutation loop over a valid
 * image stands in for a fuzzer: under ASan it shows that no header, however
 * mangled, makes the reader touch memory outside the image. */
#include "llm/safetensors.h"

#include "common/err.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_LEN 512

static char tmp_root[] = "/tmp/check_safetensors.XXXXXX"; /* made by main() */

static void tmp_path(char path[PATH_LEN], const char *name)
{
    snprintf(path, PATH_LEN, "%s/%s", tmp_root, name);
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "fopen %s: %s", path, strerror(errno));
    ck_assert_uint_eq(fwrite(buf, 1, len, fp), len);
    ck_assert_int_eq(fclose(fp), 0);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    unsigned char *buf;
    ck_assert_msg(fp != NULL, "fopen %s: %s", path, strerror(errno));
    ck_assert_int_eq(fseek(fp, 0, SEEK_END), 0);
    *len = (size_t)ftell(fp);
    rewind(fp);
    buf = malloc(*len ? *len : 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, *len, fp), *len);
    fclose(fp);
    return buf;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* An 8-byte length, `hdr_len` header bytes, then `ndata` bytes counting up.
 * Exactly `8 + hdr_len + ndata` bytes are allocated, so ASan sees any
 * read past the end. */
static unsigned char *make_image(const char *hdr, size_t hdr_len, size_t ndata, size_t *len)
{
    uint64_t n = hdr_len;
    unsigned char *buf;
    *len = 8 + hdr_len + ndata;
    buf = malloc(*len);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, &n, 8);
    memcpy(buf + 8, hdr, hdr_len);
    for (size_t i = 0; i < ndata; i++)
        buf[8 + hdr_len + i] = (unsigned char)i;
    return buf;
}

static void assert_message(const char *err, const char *name, const char *fragment)
{
    size_t n = strlen(name);
    ck_assert_msg(strncmp(err, name, n) == 0 && err[n] == ':',
                  "message does not start with \"%s:\": %s", name, err);
    ck_assert_msg(strstr(err, fragment) != NULL, "message lacks \"%s\": %s", fragment, err);
}

/* Both entry points must refuse the image, name it and say `fragment`. */
static void expect_image_fails(const void *img, size_t len, const char *fragment)
{
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    lm_st_file *f = (lm_st_file *)&f; /* any non-NULL value: open must reset it */
    void *copy = malloc(len ? len : 1);

    tmp_path(path, "bad.safetensors");
    write_file(path, img, len);
    ck_assert_int_eq(lm_st_open(&f, path, err, sizeof err), -1);
    ck_assert_ptr_null(f);
    assert_message(err, path, fragment);

    ck_assert_ptr_nonnull(copy);
    memcpy(copy, img, len);
    err[0] = '\0';
    f = (lm_st_file *)&f;
    ck_assert_int_eq(lm_st_open_mem(&f, copy, len, "mem.st", err, sizeof err), -1);
    ck_assert_ptr_null(f);
    assert_message(err, "mem.st", fragment);
    free(copy);
}

static void expect_header_fails(const char *hdr, size_t hdr_len, size_t ndata, const char *fragment)
{
    size_t len;
    unsigned char *img = make_image(hdr, hdr_len, ndata, &len);
    expect_image_fails(img, len, fragment);
    free(img);
}

static lm_st_file *open_header(const char *hdr, size_t ndata, unsigned char **img)
{
    char err[CM_ERRSZ] = "";
    size_t len;
    lm_st_file *f;
    *img = make_image(hdr, strlen(hdr), ndata, &len);
    ck_assert_msg(lm_st_open_mem(&f, *img, len, "ok.st", err, sizeof err) == 0, "%s", err);
    return f;
}

/* ---- dtypes ---------------------------------------------------------------- */

START_TEST(test_dtype_table)
{
    static const struct {
        lm_dtype dt;
        const char *name;
        size_t size;
    } want[] = {
        {LM_DT_F32, "F32", 4}, {LM_DT_F16, "F16", 2}, {LM_DT_BF16, "BF16", 2},
        {LM_DT_F64, "F64", 8}, {LM_DT_I64, "I64", 8}, {LM_DT_I32, "I32", 4},
        {LM_DT_I16, "I16", 2}, {LM_DT_I8, "I8", 1},   {LM_DT_U8, "U8", 1},
        {LM_DT_BOOL, "BOOL", 1},
    };
    ck_assert_int_eq(sizeof want / sizeof want[0], LM_DT_COUNT);
    for (int i = 0; i < LM_DT_COUNT; i++) {
        lm_dtype got = LM_DT_COUNT;
        ck_assert_str_eq(lm_dtype_name(want[i].dt), want[i].name);
        ck_assert_uint_eq(lm_dtype_size(want[i].dt), want[i].size);
        ck_assert_int_eq(lm_dtype_parse(want[i].name, &got), 0);
        ck_assert_int_eq(got, want[i].dt);
    }
}
END_TEST

START_TEST(test_dtype_unknown)
{
    lm_dtype dt = LM_DT_I8;
    ck_assert_int_eq(lm_dtype_parse("f32", &dt), -1);
    ck_assert_int_eq(lm_dtype_parse("Q4", &dt), -1);
    ck_assert_int_eq(lm_dtype_parse("", &dt), -1);
    ck_assert_int_eq(lm_dtype_parse(NULL, &dt), -1);
    ck_assert_int_eq(dt, LM_DT_I8);
    ck_assert_uint_eq(lm_dtype_size(LM_DT_COUNT), 0);
    ck_assert_str_eq(lm_dtype_name(LM_DT_COUNT), "invalid");
}
END_TEST

/* ---- round trip -------------------------------------------------------------- */

typedef struct rt_tensor {
    const char *name;
    lm_dtype dtype;
    int ndim;
    int64_t shape[LM_ST_MAX_DIMS];
    int64_t numel;
} rt_tensor;

/* Odd sizes first, so that later tensors start unaligned in the data section. */
static const rt_tensor rt_tensors[] = {
    {"bytes", LM_DT_U8, 1, {5}, 5},
    {"w.f32", LM_DT_F32, 2, {2, 3}, 6},
    {"scalar", LM_DT_F64, 0, {0}, 1},
    {"empty", LM_DT_F32, 2, {0, 4}, 0},
    {"bf16", LM_DT_BF16, 1, {4}, 4},
    {"f16", LM_DT_F16, 3, {1, 2, 1}, 2},
    {"ids", LM_DT_I64, 2, {2, 2}, 4},
    {"i32", LM_DT_I32, 1, {3}, 3},
    {"i16", LM_DT_I16, 1, {3}, 3},
    {"i8", LM_DT_I8, 4, {1, 1, 1, 3}, 3},
    {"mask", LM_DT_BOOL, 1, {3}, 3},
    {"eight.dims", LM_DT_U8, 8, {1, 2, 1, 2, 1, 2, 1, 1}, 8},
};
#define N_RT ((int)(sizeof rt_tensors / sizeof rt_tensors[0]))

static const char *const rt_meta[][2] = {
    {"arch", "ranker-v1"}, {"d_model", "32"}, {"note", "ünïcode ✓"}, {"empty", ""},
};
#define N_META ((int)(sizeof rt_meta / sizeof rt_meta[0]))

/* Tensor i's bytes: a pattern that differs per tensor and per byte. */
static void rt_fill(int i, unsigned char *buf, size_t n)
{
    for (size_t k = 0; k < n; k++)
        buf[k] = (unsigned char)(31 * i + 7 * k + 1);
}

static void rt_save(const char *path)
{
    char err[CM_ERRSZ] = "";
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_ptr_nonnull(w);
    for (int i = 0; i < N_RT; i++) {
        unsigned char data[64];
        const rt_tensor *t = &rt_tensors[i];
        rt_fill(i, data, sizeof data);
        ck_assert_msg(lm_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, data,
                                       err, sizeof err) == 0, "%s", err);
        memset(data, 0, sizeof data); /* the writer must have copied */
        if (i == 1) /* metadata added among tensors still goes first in the file */
            for (int m = 0; m < N_META; m++)
                ck_assert_msg(lm_st_writer_meta(w, rt_meta[m][0], rt_meta[m][1],
                                                err, sizeof err) == 0, "%s", err);
    }
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);
}

static void rt_check_tensor(const lm_st_file *f, int i)
{
    const rt_tensor *want = &rt_tensors[i];
    const lm_st_tensor *t = lm_st_at(f, i);
    unsigned char bytes[64];
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->name, want->name);
    ck_assert_ptr_eq(lm_st_find(f, want->name), t);
    ck_assert_int_eq(t->dtype, want->dtype);
    ck_assert_int_eq(t->ndim, want->ndim);
    for (int d = 0; d < want->ndim; d++)
        ck_assert_int_eq(t->shape[d], want->shape[d]);
    ck_assert_int_eq(t->numel, want->numel);
    ck_assert_uint_eq(t->nbytes, (size_t)want->numel * lm_dtype_size(want->dtype));
    rt_fill(i, bytes, sizeof bytes);
    ck_assert_mem_eq(t->data, bytes, t->nbytes);
}

START_TEST(test_round_trip)
{
    char path[PATH_LEN], tmp[PATH_LEN + 8], err[CM_ERRSZ] = "";
    lm_st_file *f;
    const char *k, *v;
    tmp_path(path, "rt.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    rt_save(path);
    ck_assert(!exists(tmp));

    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(lm_st_path(f), path);
    ck_assert_int_eq(lm_st_count(f), N_RT);
    for (int i = 0; i < N_RT; i++)
        rt_check_tensor(f, i);
    ck_assert_ptr_null(lm_st_at(f, N_RT));
    ck_assert_ptr_null(lm_st_at(f, -1));
    ck_assert_ptr_null(lm_st_find(f, "nope"));
    ck_assert_ptr_null(lm_st_find(f, "w.f3"));

    ck_assert_int_eq(lm_st_meta_count(f), N_META);
    for (int m = 0; m < N_META; m++) {
        lm_st_meta_at(f, m, &k, &v);
        ck_assert_str_eq(k, rt_meta[m][0]);
        ck_assert_str_eq(v, rt_meta[m][1]);
        ck_assert_str_eq(lm_st_meta(f, rt_meta[m][0]), rt_meta[m][1]);
    }
    lm_st_meta_at(f, N_META, &k, &v);
    ck_assert_ptr_null(k);
    ck_assert_ptr_null(v);
    ck_assert_ptr_null(lm_st_meta(f, "missing"));
    lm_st_close(f);
}
END_TEST

/* The writer's bytes are what the reference Python writer produces: compact
 * JSON, __metadata__ first, consecutive offsets, space padding to 8. */
START_TEST(test_writer_layout)
{
    static const char want_hdr[] =
        "{\"__metadata__\":{\"k\":\"v\"},"
        "\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
        "\"b\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[3,5]}}";
    const unsigned char a[3] = {1, 2, 3}, b[2] = {4, 5};
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    lm_st_writer *w = lm_st_writer_new();
    size_t len, n = sizeof want_hdr - 1, padded = (n + 7) / 8 * 8;
    uint64_t hlen;
    unsigned char *img;

    ck_assert_int_eq(lm_st_writer_add(w, "a", LM_DT_U8, 1, (int64_t[]){3}, a, err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_I16, 0, NULL, b, err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_meta(w, "k", "v", err, sizeof err), 0);
    tmp_path(path, "layout.safetensors");
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);

    img = read_file(path, &len);
    memcpy(&hlen, img, 8);
    ck_assert_uint_eq(hlen, padded);
    ck_assert_uint_eq(len, 8 + padded + 5);
    ck_assert_mem_eq(img + 8, want_hdr, n);
    for (size_t i = n; i < padded; i++)
        ck_assert_int_eq(img[8 + i], ' ');
    ck_assert_mem_eq(img + 8 + padded, "\1\2\3\4\5", 5);
    free(img);
}
END_TEST

START_TEST(test_writer_empty)
{
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    lm_st_writer *w = lm_st_writer_new();
    lm_st_file *f;
    tmp_path(path, "empty.safetensors");
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(lm_st_count(f), 0);
    ck_assert_int_eq(lm_st_meta_count(f), 0);
    lm_st_close(f);
}
END_TEST

/* A second save replaces the first completely. */
START_TEST(test_writer_overwrite)
{
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    const float one = 1.0f, two[2] = {2.0f, 3.0f};
    lm_st_file *f;
    const lm_st_tensor *t;
    tmp_path(path, "over.safetensors");
    for (int round = 0; round < 2; round++) {
        lm_st_writer *w = lm_st_writer_new();
        ck_assert_int_eq(lm_st_writer_add(w, round ? "y" : "x", LM_DT_F32, 1,
                                          (int64_t[]){round + 1}, round ? two : &one,
                                          err, sizeof err), 0);
        ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
        lm_st_writer_free(w);
    }
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(lm_st_count(f), 1);
    ck_assert_int_eq(lm_st_expect(f, "y", LM_DT_F32, 1, (int64_t[]){2}, &t, err, sizeof err), 0);
    ck_assert_mem_eq(t->data, two, sizeof two);
    lm_st_close(f);
}
END_TEST

/* ---- lm_st_expect ------------------------------------------------------------ */

START_TEST(test_expect)
{
    char path[PATH_LEN], want[PATH_LEN + 64], err[CM_ERRSZ] = "";
    lm_st_file *f;
    const lm_st_tensor *t = NULL;
    tmp_path(path, "expect.safetensors");
    rt_save(path);
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);

    ck_assert_int_eq(lm_st_expect(f, "w.f32", LM_DT_F32, 2, (int64_t[]){2, 3}, &t, err, sizeof err), 0);
    ck_assert_ptr_eq(t, lm_st_at(f, 1));
    ck_assert_int_eq(lm_st_expect(f, "scalar", LM_DT_F64, 0, NULL, NULL, err, sizeof err), 0);

    ck_assert_int_eq(lm_st_expect(f, "nope", LM_DT_F32, 0, NULL, &t, err, sizeof err), -1);
    ck_assert_ptr_null(t);
    snprintf(want, sizeof want, "%s: tensor nope is missing", path);
    ck_assert_str_eq(err, want);

    ck_assert_int_eq(lm_st_expect(f, "i8", LM_DT_F32, 4, (int64_t[]){1, 1, 1, 3}, &t, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: tensor i8 has dtype I8, expected F32", path);
    ck_assert_str_eq(err, want);

    ck_assert_int_eq(lm_st_expect(f, "w.f32", LM_DT_F32, 2, (int64_t[]){3, 2}, &t, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: tensor w.f32 has shape [2,3], expected [3,2]", path);
    ck_assert_str_eq(err, want);

    ck_assert_int_eq(lm_st_expect(f, "w.f32", LM_DT_F32, 1, (int64_t[]){6}, &t, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: tensor w.f32 has shape [2,3], expected [6]", path);
    ck_assert_str_eq(err, want);

    ck_assert_int_eq(lm_st_expect(f, "scalar", LM_DT_F64, 1, (int64_t[]){1}, &t, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: tensor scalar has shape [], expected [1]", path);
    ck_assert_str_eq(err, want);

    ck_assert_int_eq(lm_st_expect(f, "w.f32", LM_DT_F32, 9, NULL, &t, err, sizeof err), -1);
    assert_message(err, path, "expected ndim 9");
    lm_st_close(f);
}
END_TEST

/* ---- the golden file from the reference implementation ------------------------ */

static void golden_path(char path[PATH_LEN], const char *name)
{
    const char *dir = getenv("RANKD_GOLDEN_DIR");
    snprintf(path, PATH_LEN, "%s/%s", dir && *dir ? dir : "../shared/golden", name);
}

START_TEST(test_golden_tiny)
{
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    lm_st_file *f;
    const lm_st_tensor *t;
    golden_path(path, "tiny.weights.safetensors");
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);

    ck_assert_str_eq(lm_st_meta(f, "arch"), "ranker-v1");
    ck_assert_str_eq(lm_st_meta(f, "d_model"), "32");
    ck_assert_str_eq(lm_st_meta(f, "n_layers"), "2");
    ck_assert_int_eq(lm_st_count(f), 3 + 2 * 12 + 4);
    ck_assert_str_eq(lm_st_at(f, 0)->name, "item_emb");
    ck_assert_str_eq(lm_st_at(f, lm_st_count(f) - 1)->name, "head.bias");

    ck_assert_msg(lm_st_expect(f, "item_emb", LM_DT_F32, 2, (int64_t[]){50, 32}, &t, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_uint_eq(t->nbytes, 50 * 32 * 4);
    ck_assert_msg(lm_st_expect(f, "layers.1.attn.qkv.weight", LM_DT_F32, 2, (int64_t[]){96, 32},
                               NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(lm_st_expect(f, "layers.0.ffn.up.weight", LM_DT_F32, 2, (int64_t[]){64, 32},
                               NULL, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(lm_st_expect(f, "head.bias", LM_DT_F32, 1, (int64_t[]){1}, NULL, err, sizeof err) == 0,
                  "%s", err);
    lm_st_close(f);
}
END_TEST

/* Every file the reference writer produced must pass the strict checks. */
START_TEST(test_golden_all)
{
    static const char *const names[] = {
        "tiny.weights.safetensors", "tiny.io.safetensors", "small.weights.safetensors",
        "small.io.safetensors", "odd.weights.safetensors", "odd.io.safetensors",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[PATH_LEN], err[CM_ERRSZ] = "";
        lm_st_file *f;
        golden_path(path, names[i]);
        ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
        ck_assert_int_gt(lm_st_count(f), 0);
        lm_st_close(f);
    }
}
END_TEST

/* ---- files the reader must accept -------------------------------------------- */

#define U8(shape, b, e) "{\"dtype\":\"U8\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

START_TEST(test_accept_padding)
{
    unsigned char *img;
    lm_st_file *f = open_header("{\"a\":" U8("[2]", 0, 2) "} \t\n\r    ", 2, &img);
    ck_assert_int_eq(lm_st_count(f), 1);
    lm_st_close(f);
    free(img);
}
END_TEST

START_TEST(test_accept_no_tensors)
{
    unsigned char *img;
    lm_st_file *f = open_header("{}", 0, &img);
    ck_assert_int_eq(lm_st_count(f), 0);
    lm_st_close(f);
    free(img);
    f = open_header("{\"__metadata__\":{}}", 0, &img);
    ck_assert_int_eq(lm_st_meta_count(f), 0);
    lm_st_close(f);
    free(img);
}
END_TEST

/* Header order is kept even when it differs from the order of the data. */
START_TEST(test_accept_file_order)
{
    unsigned char *img;
    lm_st_file *f = open_header("{\"b\":" U8("[2]", 2, 4) ",\"a\":" U8("[2]", 0, 2) "}", 4, &img);
    uint64_t hlen;
    const unsigned char *data;
    memcpy(&hlen, img, 8);
    data = img + 8 + hlen;
    ck_assert_str_eq(lm_st_at(f, 0)->name, "b");
    ck_assert_str_eq(lm_st_at(f, 1)->name, "a");
    ck_assert_ptr_eq(lm_st_at(f, 0)->data, data + 2);
    ck_assert_ptr_eq(lm_st_at(f, 1)->data, data);
    lm_st_close(f);
    free(img);
}
END_TEST

/* Zero-size tensors own no bytes: they may sit at any offset up to the end
 * of the data, inside another tensor's range included. */
START_TEST(test_accept_zero_size)
{
    unsigned char *img;
    lm_st_file *f = open_header("{\"z0\":" U8("[0]", 0, 0) ",\"a\":" U8("[4]", 0, 4)
                                ",\"z2\":" U8("[3,0]", 2, 2) ",\"z4\":" U8("[0]", 4, 4)
                                ",\"e\":" U8("[0]", 0, 0) "}", 4, &img);
    ck_assert_int_eq(lm_st_count(f), 5);
    ck_assert_int_eq(lm_st_find(f, "z2")->numel, 0);
    ck_assert_uint_eq(lm_st_find(f, "z2")->nbytes, 0);
    ck_assert_ptr_eq(lm_st_find(f, "z2")->data, (const unsigned char *)lm_st_find(f, "a")->data + 2);
    lm_st_close(f);
    free(img);
}
END_TEST

START_TEST(test_accept_long_name)
{
    char hdr[600], name[LM_ST_MAX_NAME + 1];
    unsigned char *img;
    lm_st_file *f;
    memset(name, 'n', LM_ST_MAX_NAME);
    name[LM_ST_MAX_NAME] = '\0';
    snprintf(hdr, sizeof hdr, "{\"%s\":" U8("[1]", 0, 1) "}", name);
    f = open_header(hdr, 1, &img);
    ck_assert_str_eq(lm_st_at(f, 0)->name, name);
    lm_st_close(f);
    free(img);
}
END_TEST

/* ---- files the reader must refuse: the length prefix ------------------------- */

START_TEST(test_too_short)
{
    static const unsigned char seven[7] = {8, 0, 0, 0, 0, 0, 0};
    expect_image_fails(seven, 0, "file is 0 bytes, shorter than the 8-byte header length");
    expect_image_fails(seven, 5, "file is 5 bytes, shorter than");
    expect_image_fails(seven, 7, "file is 7 bytes, shorter than");
}
END_TEST

START_TEST(test_header_length_zero)
{
    unsigned char img[16] = {0};
    expect_image_fails(img, sizeof img, "header length is 0");
}
END_TEST

START_TEST(test_header_length_huge)
{
    unsigned char img[16] = {0};
    uint64_t n = 200u << 20;
    memcpy(img, &n, 8);
    expect_image_fails(img, sizeof img, "header length 209715200 exceeds the limit of 104857600 bytes");
    n = UINT64_MAX;
    memcpy(img, &n, 8);
    expect_image_fails(img, sizeof img, "header length 18446744073709551615 exceeds the limit");
}
END_TEST

START_TEST(test_header_past_eof)
{
    unsigned char img[100];
    uint64_t n = 4096;
    memset(img, ' ', sizeof img);
    memcpy(img, &n, 8);
    expect_image_fails(img, sizeof img, "header length 4096 exceeds file size 100");
    n = 93; /* one byte more than the file holds */
    memcpy(img, &n, 8);
    expect_image_fails(img, sizeof img, "header length 93 exceeds file size 100");
}
END_TEST

/* ---- files the reader must refuse: the JSON header --------------------------- */

typedef struct bad_header {
    const char *header;
    size_t ndata;
    const char *fragment;
} bad_header;

#define ENTRY(dtype, shape, offsets) \
    "{\"dtype\":" dtype ",\"shape\":" shape ",\"data_offsets\":" offsets "}"

static const bad_header bad_headers[] = {
    /* JSON */
    {"{\"a\":", 0, "header is not valid JSON"},
    {"{\"a\":1} x", 0, "header is not valid JSON"},
    {"\"just a string\"", 0, "header is not valid JSON"},
    {"[1,2]", 0, "header is not a JSON object"},
    {"{\"a\":" U8("[1]", 0, 1) ",\"a\":" U8("[1]", 0, 1) "}", 1, "duplicate object key"},
    {"{\"\xff\":" U8("[1]", 0, 1) "}", 1, "header is not valid JSON"},
    {"{\"a\\u0000b\":" U8("[1]", 0, 1) "}", 1, "header is not valid JSON"},
    {"{\"__metadata__\":{\"k\":\"a\\u0000b\"}}", 0, "header is not valid JSON"},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1,
     "header is not valid JSON"},
    /* __metadata__ */
    {"{\"__metadata__\":\"x\"}", 0, "__metadata__ is not an object"},
    {"{\"__metadata__\":[]}", 0, "__metadata__ is not an object"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of \"k\" is not a string"},
    {"{\"__metadata__\":{\"a\":\"1\",\"k\":null}}", 0, "__metadata__ value of \"k\" is not a string"},
    /* tensor entries */
    {"{\"a\":[1]}", 0, "tensor \"a\": entry is not an object"},
    {"{\"a\":\"F32\"}", 0, "tensor \"a\": entry is not an object"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor \"a\": missing \"dtype\""},
    {"{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, "tensor \"a\": missing \"shape\""},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, "tensor \"a\": missing \"data_offsets\""},
    {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"align\":8}}", 1,
     "tensor \"a\": unknown key \"align\""},
    {"{\"\":" U8("[1]", 0, 1) "}", 1, "tensor name \"\" is 0 bytes long"},
    /* dtype */
    {"{\"a\":" ENTRY("\"Q4\"", "[1]", "[0,1]") "}", 1,
     "tensor \"a\": dtype \"Q4\" is not a known dtype (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)"},
    {"{\"a\":" ENTRY("\"f32\"", "[1]", "[0,4]") "}", 4, "dtype \"f32\" is not a known dtype"},
    {"{\"a\":" ENTRY("4", "[1]", "[0,4]") "}", 4, "tensor \"a\": dtype is not a string"},
    /* shape */
    {"{\"a\":" U8("[-1]", 0, 0) "}", 0, "tensor \"a\": shape[0] is not a non-negative integer"},
    {"{\"a\":" U8("[1.0]", 0, 1) "}", 1, "shape[0] is not a non-negative integer"},
    {"{\"a\":" U8("[1,\"2\"]", 0, 2) "}", 2, "shape[1] is not a non-negative integer"},
    {"{\"a\":" U8("[true]", 0, 1) "}", 1, "shape[0] is not a non-negative integer"},
    {"{\"a\":" U8("4", 0, 4) "}", 4, "tensor \"a\": shape is not an array"},
    {"{\"a\":" U8("[1,1,1,1,1,1,1,1,1]", 0, 1) "}", 1, "tensor \"a\": shape has 9 dims, at most 8 allowed"},
    /* data_offsets */
    {"{\"a\":" ENTRY("\"U8\"", "[1]", "[0]") "}", 1, "data_offsets is not an array of exactly two integers"},
    {"{\"a\":" ENTRY("\"U8\"", "[1]", "[0,1,1]") "}", 1, "data_offsets is not an array of exactly two"},
    {"{\"a\":" ENTRY("\"U8\"", "[1]", "{}") "}", 1, "data_offsets is not an array of exactly two"},
    {"{\"a\":" ENTRY("\"U8\"", "[1]", "[-1,0]") "}", 1, "data_offsets are not non-negative integers"},
    {"{\"a\":" ENTRY("\"U8\"", "[1]", "[0,1.5]") "}", 2, "data_offsets are not non-negative integers"},
    {"{\"a\":" U8("[0]", 8, 4) "}", 8, "tensor \"a\": data_offsets begin 8 > end 4"},
    {"{\"a\":" U8("[16]", 0, 16) "}", 8,
     "tensor \"a\": data_offsets [0,16] run past the end of the 8-byte data section"},
    {"{\"a\":" U8("[9]", 0, 9) "}", 8, "data_offsets [0,9] run past the end of the 8-byte data section"},
    {"{\"a\":" U8("[8]", 0, 8) ",\"z\":" U8("[0]", 9, 9) "}", 8,
     "tensor \"z\": data_offsets [9,9] run past the end"},
    /* byte counts */
    {"{\"a\":" ENTRY("\"F32\"", "[3]", "[0,8]") "}", 8,
     "tensor \"a\": data_offsets [0,8] hold 8 bytes but F32 [3] needs 12"},
    {"{\"a\":" ENTRY("\"F32\"", "[]", "[0,1]") "}", 1, "hold 1 bytes but F32 [] needs 4"},
    {"{\"a\":" U8("[4]", 0, 8) "}", 8, "data_offsets [0,8] hold 8 bytes but U8 [4] needs 4"},
    {"{\"a\":" ENTRY("\"F32\"", "[1099511627776,1099511627776]", "[0,8]") "}", 8,
     "tensor \"a\": size of F32 [1099511627776,1099511627776] overflows 63 bits"},
    {"{\"a\":" ENTRY("\"F64\"", "[2305843009213693952]", "[0,8]") "}", 8, "overflows 63 bits"},
    {"{\"a\":" ENTRY("\"U8\"", "[0,4294967296,4294967296]", "[0,0]") "}", 0, "overflows 63 bits"},
    /* layout of the data section */
    {"{\"a\":" U8("[12]", 0, 12) ",\"b\":" U8("[8]", 8, 16) "}", 16,
     "tensor \"a\": data_offsets [0,12] overlap tensor \"b\" [8,16]"},
    {"{\"b\":" U8("[8]", 8, 16) ",\"a\":" U8("[12]", 0, 12) "}", 16,
     "tensor \"a\": data_offsets [0,12] overlap tensor \"b\" [8,16]"},
    {"{\"a\":" U8("[4]", 0, 4) ",\"b\":" U8("[4]", 0, 4) "}", 4, "overlap tensor"},
    {"{\"a\":" U8("[4]", 0, 4) ",\"b\":" U8("[4]", 8, 12) "}", 12,
     "data bytes [4,8) belong to no tensor (hole before tensor \"b\")"},
    {"{\"a\":" U8("[4]", 4, 8) "}", 8, "data bytes [0,4) belong to no tensor"},
    {"{\"a\":" U8("[4]", 0, 4) "}", 8, "4 trailing bytes after the last tensor"},
    {"{}", 3, "3 trailing bytes after the last tensor"},
};
#define N_BAD ((int)(sizeof bad_headers / sizeof bad_headers[0]))

START_TEST(test_bad_header)
{
    const bad_header *c = &bad_headers[_i];
    expect_header_fails(c->header, strlen(c->header), c->ndata, c->fragment);
}
END_TEST

START_TEST(test_name_too_long)
{
    char hdr[600], name[LM_ST_MAX_NAME + 2];
    memset(name, 'n', LM_ST_MAX_NAME + 1);
    name[LM_ST_MAX_NAME + 1] = '\0';
    snprintf(hdr, sizeof hdr, "{\"%s\":" U8("[1]", 0, 1) "}", name);
    expect_header_fails(hdr, strlen(hdr), 1, "is 256 bytes long; it must be 1..255");
}
END_TEST

/* Raw NUL and control bytes inside the JSON, where strlen() cannot reach. */
START_TEST(test_nul_bytes)
{
    static const char key_nul[] = "{\"a\0b\":" U8("[1]", 0, 1) "}";
    static const char pad_nul[] = "{\"a\":" U8("[1]", 0, 1) "}\0\0\0";
    static const char all_nul[8] = {0};
    expect_header_fails(key_nul, sizeof key_nul - 1, 1, "header is not valid JSON");
    expect_header_fails(pad_nul, sizeof pad_nul - 1, 1, "header is not valid JSON");
    expect_header_fails(all_nul, sizeof all_nul, 0, "header is not valid JSON");
}
END_TEST

/* jansson bounds its recursion depth, so deep nesting is an error, not a
 * stack overflow. */
START_TEST(test_deep_nesting)
{
    enum { DEPTH = 100000 };
    char *hdr = malloc(DEPTH + 8);
    ck_assert_ptr_nonnull(hdr);
    strcpy(hdr, "{\"a\":");
    memset(hdr + 5, '[', DEPTH);
    hdr[5 + DEPTH] = '\0';
    expect_header_fails(hdr, strlen(hdr), 0, "header is not valid JSON");
    free(hdr);
}
END_TEST

START_TEST(test_open_errors)
{
    char path[PATH_LEN], err[CM_ERRSZ] = "";
    lm_st_file *f;
    tmp_path(path, "does-not-exist.safetensors");
    ck_assert_int_eq(lm_st_open(&f, path, err, sizeof err), -1);
    assert_message(err, path, "open: No such file or directory");
    ck_assert_int_eq(lm_st_open(&f, tmp_root, err, sizeof err), -1);
    assert_message(err, tmp_root, "not a regular file");
    ck_assert_int_eq(lm_st_open(&f, path, NULL, 0), -1); /* no buffer: still just an error */
    ck_assert_ptr_null(f);
    lm_st_close(NULL);
}
END_TEST

/* ---- robustness: a seeded mutation loop ------------------------------------- */

static uint64_t rng_state;

static uint64_t rng(void) /* xorshift64*: fixed seed, same sequence everywhere */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static size_t rng_below(size_t n)
{
    return n ? (size_t)(rng() % n) : 0;
}

/* One random edit: a bit flip, a JSON-significant byte, a digit swap, a
 * changed length prefix, or a truncation. The header region gets most. */
static void mutate(unsigned char *img, size_t *len, size_t hdr_end)
{
    static const char special[] = "{}[],:\"\\-+.eE0123456789 \x00\x7f\xc3\xff";
    size_t at = 8 + rng_below(hdr_end - 8);
    uint64_t hlen;
    switch (rng_below(6)) {
    case 0:
        img[at] ^= (unsigned char)(1u << rng_below(8));
        break;
    case 1:
        img[at] = (unsigned char)special[rng_below(sizeof special - 1)];
        break;
    case 2:
        if (img[at] >= '0' && img[at] <= '9')
            img[at] = (unsigned char)('0' + rng_below(10));
        break;
    case 3:
        memcpy(&hlen, img, 8);
        hlen += rng_below(17) - 8;
        memcpy(img, &hlen, 8);
        break;
    case 4:
        img[rng_below(8)] = (unsigned char)rng();
        break;
    default:
        *len = rng_below(*len + 1);
        break;
    }
}

/* A successful open must hand out tensors that lie inside the image. */
static void touch_all(const lm_st_file *f, const unsigned char *img, size_t len)
{
    unsigned sum = 0;
    for (int i = 0; i < lm_st_count(f); i++) {
        const lm_st_tensor *t = lm_st_at(f, i);
        const unsigned char *p = t->data;
        uintptr_t at = (uintptr_t)p, lo = (uintptr_t)img;
        ck_assert(at >= lo && at - lo <= len && t->nbytes <= len - (at - lo));
        for (size_t k = 0; k < t->nbytes; k++)
            sum += p[k];
        ck_assert_ptr_eq(lm_st_find(f, t->name), t);
    }
    for (int m = 0; m < lm_st_meta_count(f); m++) {
        const char *k, *v;
        lm_st_meta_at(f, m, &k, &v);
        sum += (unsigned)strlen(k) + (unsigned)strlen(v);
    }
    (void)sum;
}

START_TEST(test_fuzz_header)
{
    char path[PATH_LEN];
    size_t base_len, hdr_end;
    uint64_t hlen;
    unsigned char *base;
    int ok = 0, failed = 0;

    tmp_path(path, "fuzz-base.safetensors");
    rt_save(path);
    base = read_file(path, &base_len);
    memcpy(&hlen, base, 8);
    hdr_end = 8 + (size_t)hlen;
    rng_state = 0x5eed5eed5eed5eedULL;

    for (int iter = 0; iter < 5000; iter++) {
        char err[CM_ERRSZ] = "";
        size_t len = base_len;
        unsigned char *work = malloc(base_len), *img;
        lm_st_file *f;
        ck_assert_ptr_nonnull(work);
        memcpy(work, base, base_len);
        for (int n = 1 + (int)rng_below(3); n > 0; n--)
            mutate(work, &len, hdr_end);
        img = malloc(len ? len : 1); /* exactly len bytes, so ASan sees overreads */
        ck_assert_ptr_nonnull(img);
        memcpy(img, work, len);
        if (lm_st_open_mem(&f, img, len, "fuzz", err, sizeof err) == 0) {
            touch_all(f, img, len);
            lm_st_close(f);
            ok++;
        } else {
            ck_assert_ptr_null(f);
            ck_assert_msg(strncmp(err, "fuzz: ", 6) == 0 && err[6], "iteration %d: bad message \"%s\"", iter, err);
            failed++;
        }
        free(img);
        free(work);
    }
    free(base);
    ck_assert_int_gt(ok, 0); /* some edits (inside strings, padding) keep the file valid */
    ck_assert_int_gt(failed, 0);
}
END_TEST

/* ---- writer errors ------------------------------------------------------------ */

START_TEST(test_writer_bad_tensors)
{
    char err[CM_ERRSZ], long_name[LM_ST_MAX_NAME + 2];
    const int64_t s2[2] = {2, 2}, neg[2] = {2, -3}, huge[2] = {INT64_MAX / 2, 3};
    const unsigned char data[16] = {0};
    lm_st_writer *w = lm_st_writer_new();
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';

    ck_assert_int_eq(lm_st_writer_add(w, "a", LM_DT_U8, 2, s2, data, err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_add(w, "a", LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_str_eq(err, "safetensors writer: tensor \"a\" added twice");
    ck_assert_int_eq(lm_st_writer_add(w, "", LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "must be 1..255 bytes"));
    ck_assert_int_eq(lm_st_writer_add(w, NULL, LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "must be 1..255 bytes"));
    ck_assert_int_eq(lm_st_writer_add(w, long_name, LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "must be 1..255 bytes"));
    long_name[LM_ST_MAX_NAME] = '\0';
    ck_assert_int_eq(lm_st_writer_add(w, long_name, LM_DT_U8, 2, s2, data, err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_add(w, "__metadata__", LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "\"__metadata__\" is reserved"));
    ck_assert_int_eq(lm_st_writer_add(w, "bad\xff", LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "is not valid UTF-8"));
    ck_assert_int_eq(lm_st_writer_add(w, "\xc0\xaf", LM_DT_U8, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "is not valid UTF-8"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_COUNT, 2, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor \"b\": dtype 10 is not an lm_dtype"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, 9, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor \"b\": ndim 9 is not 0..8"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, -1, s2, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "ndim -1"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, 2, NULL, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "ndim 2"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, 2, neg, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor \"b\": shape[1] is -3"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, 2, huge, data, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "overflows"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, 2, s2, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "tensor \"b\": data is NULL"));
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_U8, 2, (int64_t[]){0, 5}, NULL, err, sizeof err), 0);
    lm_st_writer_free(w);
    lm_st_writer_free(NULL);
}
END_TEST

START_TEST(test_writer_bad_meta)
{
    char err[CM_ERRSZ];
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_int_eq(lm_st_writer_meta(w, "k", "1", err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_meta(w, "k", "2", err, sizeof err), -1);
    ck_assert_str_eq(err, "safetensors writer: metadata key \"k\" added twice");
    ck_assert_int_eq(lm_st_writer_meta(w, "v", "\xff", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "not valid UTF-8"));
    ck_assert_int_eq(lm_st_writer_meta(w, NULL, "x", err, sizeof err), -1);
    ck_assert_int_eq(lm_st_writer_meta(w, "x", NULL, err, sizeof err), -1);
    lm_st_writer_free(w);
}
END_TEST

/* Refused adds leave the writer as it was: the saved file holds the rest. */
START_TEST(test_writer_survives_errors)
{
    char path[PATH_LEN], err[CM_ERRSZ];
    const int32_t v[2] = {7, -7};
    lm_st_writer *w = lm_st_writer_new();
    lm_st_file *f;
    ck_assert_int_eq(lm_st_writer_add(w, "a", LM_DT_I32, 1, (int64_t[]){2}, v, err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_add(w, "a", LM_DT_I32, 1, (int64_t[]){2}, v, err, sizeof err), -1);
    ck_assert_int_eq(lm_st_writer_add(w, "b", LM_DT_I32, 1, (int64_t[]){-2}, v, err, sizeof err), -1);
    ck_assert_int_eq(lm_st_writer_meta(w, "k", "v", err, sizeof err), 0);
    ck_assert_int_eq(lm_st_writer_meta(w, "k", "w", err, sizeof err), -1);
    tmp_path(path, "survive.safetensors");
    ck_assert_msg(lm_st_writer_save(w, path, err, sizeof err) == 0, "%s", err);
    lm_st_writer_free(w);
    ck_assert_msg(lm_st_open(&f, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(lm_st_count(f), 1);
    ck_assert_mem_eq(lm_st_at(f, 0)->data, v, sizeof v);
    ck_assert_str_eq(lm_st_meta(f, "k"), "v");
    lm_st_close(f);
}
END_TEST

static lm_st_writer *one_tensor_writer(void)
{
    char err[CM_ERRSZ];
    const float x = 1.5f;
    lm_st_writer *w = lm_st_writer_new();
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(lm_st_writer_add(w, "x", LM_DT_F32, 0, NULL, &x, err, sizeof err), 0);
    return w;
}

START_TEST(test_writer_missing_dir)
{
    char path[PATH_LEN], tmp[PATH_LEN + 8], err[CM_ERRSZ] = "";
    lm_st_writer *w = one_tensor_writer();
    tmp_path(path, "no-such-dir/m.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ck_assert_int_eq(lm_st_writer_save(w, path, err, sizeof err), -1);
    assert_message(err, path, ": create ");
    ck_assert_ptr_nonnull(strstr(err, tmp));
    ck_assert_ptr_nonnull(strstr(err, "No such file or directory"));
    ck_assert(!exists(tmp));
    ck_assert(!exists(path));
    lm_st_writer_free(w);
}
END_TEST

/* The tmp file is written, then rename fails: it must be cleaned up. */
START_TEST(test_writer_rename_fails)
{
    char path[PATH_LEN], tmp[PATH_LEN + 8], err[CM_ERRSZ] = "";
    struct stat st;
    lm_st_writer *w = one_tensor_writer();
    tmp_path(path, "a-directory");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    ck_assert_int_eq(lm_st_writer_save(w, path, err, sizeof err), -1);
    assert_message(err, path, ": rename ");
    ck_assert_ptr_nonnull(strstr(err, strerror(EISDIR)));
    ck_assert(!exists(tmp));
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_int_eq(rmdir(path), 0);
    lm_st_writer_free(w);
}
END_TEST

/* ---- runner ------------------------------------------------------------------- */

static Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc;

    tc = tcase_create("dtype");
    tcase_add_test(tc, test_dtype_table);
    tcase_add_test(tc, test_dtype_unknown);
    suite_add_tcase(s, tc);

    tc = tcase_create("round_trip");
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_writer_layout);
    tcase_add_test(tc, test_writer_empty);
    tcase_add_test(tc, test_writer_overwrite);
    tcase_add_test(tc, test_expect);
    suite_add_tcase(s, tc);

    tc = tcase_create("golden");
    tcase_add_test(tc, test_golden_tiny);
    tcase_add_test(tc, test_golden_all);
    suite_add_tcase(s, tc);

    tc = tcase_create("accept");
    tcase_add_test(tc, test_accept_padding);
    tcase_add_test(tc, test_accept_no_tensors);
    tcase_add_test(tc, test_accept_file_order);
    tcase_add_test(tc, test_accept_zero_size);
    tcase_add_test(tc, test_accept_long_name);
    suite_add_tcase(s, tc);

    tc = tcase_create("corrupt");
    tcase_add_test(tc, test_too_short);
    tcase_add_test(tc, test_header_length_zero);
    tcase_add_test(tc, test_header_length_huge);
    tcase_add_test(tc, test_header_past_eof);
    tcase_add_loop_test(tc, test_bad_header, 0, N_BAD);
    tcase_add_test(tc, test_name_too_long);
    tcase_add_test(tc, test_nul_bytes);
    tcase_add_test(tc, test_deep_nesting);
    tcase_add_test(tc, test_open_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("fuzz");
    tcase_add_test(tc, test_fuzz_header);
    tcase_set_timeout(tc, 60); /* ASan builds are several times slower */
    suite_add_tcase(s, tc);

    tc = tcase_create("writer_errors");
    tcase_add_test(tc, test_writer_bad_tensors);
    tcase_add_test(tc, test_writer_bad_meta);
    tcase_add_test(tc, test_writer_survives_errors);
    tcase_add_test(tc, test_writer_missing_dir);
    tcase_add_test(tc, test_writer_rename_fails);
    suite_add_tcase(s, tc);
    return s;
}

/* Removes the scratch directory and the files the tests left in it. */
static void remove_tmp_root(void)
{
    DIR *d = opendir(tmp_root);
    struct dirent *e;
    char path[PATH_LEN];
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        tmp_path(path, e->d_name);
        if (unlink(path) < 0)
            rmdir(path);
    }
    if (d)
        closedir(d);
    rmdir(tmp_root);
}

int main(void)
{
    SRunner *sr;
    int failed;
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    sr = srunner_create(safetensors_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tmp_root();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
