# rankd — one entry point.
#
#   make              build build/rankd (CUDA parts only where nvcc exists)
#   make test         install what is missing, build, run every Check suite,
#                     then run them again under ASan + UBSan, then each fuzz
#                     target briefly (FUZZ_CI_SECONDS, 10 s each)
#   make fuzz         each libFuzzer target of tests/fuzz for FUZZ_SECONDS
#                     (60) seconds; fails on any crash, leak or UB report
#   make bench        CPU benchmarks against the PyTorch anchor
#   make soak         rankd serve under a sustained load for SOAK_SECONDS
#                     (180): latency, Redis memory and rankd's RSS over time
#   make test-gpu     the GPU engine's suite, plain and under compute-sanitizer
#                     (on the GPU machine: docs/gpu.md)
#   make bench-gpu    GPU benchmarks against the PyTorch GPU anchor (same)
#   make run          run rankd on its embedded default
#   make clean
#
# Optional parts are switched by variables: WITH_CUDA=0 skips the GPU code
# even where nvcc exists (gpu/engine_none.c stands in); SAN=1 builds with
# AddressSanitizer and UndefinedBehaviorSanitizer into build/asan; SAN=fuzz
# builds with clang, libFuzzer's coverage and both sanitizers into
# build/fuzz (make fuzz does that itself).

CC      ?= gcc
NVCC    ?= nvcc
SAN     ?= 0
ifeq ($(SAN),1)
BUILD   ?= build/asan
else ifeq ($(SAN),fuzz)
BUILD   ?= build/fuzz
OPT     ?= -O1
override CC := $(or $(FUZZ_CC),clang)
else
BUILD   ?= build
endif

GIT_REV := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION := 0.1.0

# -ffp-contract=off: no silent a*b+c fusion, so that the scalar and SIMD
# kernels do the same float operations in the same order (see llm/kernels.h).
CFLAGS_COMMON := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
                 -Wstrict-prototypes -Wmissing-prototypes -Wvla \
                 -ffp-contract=off -fno-math-errno -g -MMD -MP -I. \
                 -DRANKD_VERSION='"$(VERSION)"' -DRANKD_GIT='"$(GIT_REV)"' $(BLAS_CFLAGS) $(GPU_SYS_CFLAGS)
OPT     ?= -O2
KOPT    ?= -O3
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
LDLIBS  := -lrdkafka -lmicrohttpd -ljansson -lyaml -lhiredis $(BLAS_LIBS) -lpthread -lm

ifeq ($(SAN),1)
CFLAGS_COMMON += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
endif
# Coverage for libFuzzer and both sanitizers in every object the targets
# reach; the targets alone link libFuzzer's main. The SIMD kernels are left
# plain: no target runs them (a model is loaded, never run), and clang
# takes minutes over each under ASan at -O3.
ifeq ($(SAN),fuzz)
FUZZ_INSTR := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
$(BUILD)/llm/kern_%.o: FUZZ_INSTR :=
endif
CFLAGS ?= $(OPT)
ALL_CFLAGS = $(CFLAGS_COMMON) $(FUZZ_INSTR) $(CFLAGS)

# ---- sources ---------------------------------------------------------------

LLM_SRCS := llm/safetensors.c llm/model.c llm/forward.c llm/kernels.c llm/pool.c \
            llm/retrieval.c llm/quantize.c llm/eval.c llm/train_ops.c llm/train_model.c llm/train.c \
            llm/kern_scalar.c llm/kern_avx2.c llm/kern_avx512.c llm/kern_amx.c
SVC_SRCS := service/cmd_model.c service/cmd_train.c service/args.c service/events.c service/config.c \
            service/cmd_config.c service/cmd_kafka.c service/offsets.c service/metrics.c service/http.c \
            service/log.c service/rankreq.c service/serve.c service/kafka.c \
            service/ckpt.c service/progress.c service/rescore.c service/models.c
RANKER_SRCS := ranker/rk_scorer.c ranker/batcher.c
FS_SRCS  := features/fs.c
LIB_SRCS := common/strmap.c common/sha256.c llm/dataset.c llm/dataset_load.c llm/synth.c $(LLM_SRCS) \
            $(RANKER_SRCS) $(FS_SRCS) $(SVC_SRCS)
MAIN_SRC := service/main.c
GEN_OBJS := $(BUILD)/configs/default_yaml.o

# Kernels are compiled once per instruction set and picked at run time.
ISA_avx2   := -mavx2 -mfma -mf16c
ISA_avx512 := $(ISA_avx2) -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni
ISA_amx    := $(ISA_avx512) -mamx-tile -mamx-int8
$(BUILD)/llm/kern_scalar.o: CFLAGS += $(KOPT)
$(BUILD)/llm/kern_avx2.o:   CFLAGS += $(KOPT) $(ISA_avx2)
$(BUILD)/llm/kern_avx512.o: CFLAGS += $(KOPT) $(ISA_avx512)
$(BUILD)/llm/kern_amx.o:    CFLAGS += $(KOPT) $(ISA_amx)

# CUDA: built only where nvcc exists and the engine's sources are there;
# elsewhere gpu/engine_none.c provides gpu/engine.h and rankd scores on the
# CPU. The runtime is linked statically: a binary built with CUDA starts on
# a machine without the CUDA libraries (or a GPU) and falls back there.
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
WITH_CUDA ?= $(if $(NVCC_PATH),$(if $(wildcard gpu/engine.cu),1,0),0)
CUDA_HOME ?= $(if $(NVCC_PATH),$(shell dirname $$(dirname $(NVCC_PATH))),/usr/local/cuda)
# sm_90a (Hopper: wgmma, TMA) plus a portable sm_80 build and its PTX.
NVCC_ARCH := -gencode=arch=compute_90a,code=sm_90a '-gencode=arch=compute_80,code=[sm_80,compute_80]'
NVCCFLAGS ?= -O3
ALL_NVCCFLAGS = -std=c++17 $(NVCC_ARCH) -lineinfo -I. -MMD -MP -Xcompiler -Wall,-Werror $(NVCCFLAGS)
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lpthread -lstdc++
ifeq ($(WITH_CUDA),1)
GPU_SRCS  := $(wildcard gpu/*.cu)
LDLIBS    += $(CUDA_LIBS)
else
GPU_SRCS  := gpu/engine_none.c
endif
GPU_OBJS  := $(patsubst %.c,$(BUILD)/%.o,$(GPU_SRCS:%.cu=$(BUILD)/%.o))

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(GPU_OBJS) $(GEN_OBJS)
MAIN_OBJ  := $(MAIN_SRC:%.c=$(BUILD)/%.o)
LIB       := $(BUILD)/librankd.a
RANKD     := $(BUILD)/rankd

# check_gpu runs only on the GPU machine (make test-gpu).
TEST_SRCS := $(filter-out tests/check_gpu.c,$(wildcard tests/check_*.c))
TESTS     := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null || echo -lcheck)

BENCH_BINS := $(BUILD)/bench/bench_cpu $(BUILD)/bench/bench_service

.PHONY: all deps test test-unit test-asan test-fuzz fuzz fuzz-build bench soak test-gpu bench-gpu gpu-deps run clean FORCE
all: $(RANKD)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(ALL_NVCCFLAGS) -c $< -o $@

# configs/default.yaml is compiled in: service/config.c loads it first.
$(BUILD)/configs/default_yaml.c: configs/default.yaml scripts/embed.sh
	@mkdir -p $(dir $@)
	sh scripts/embed.sh svc_default_yaml $< > $@.tmp && mv $@.tmp $@

$(BUILD)/configs/default_yaml.o: $(BUILD)/configs/default_yaml.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# The archive is rebuilt when WITH_CUDA changes, so that it never holds the
# other build's gpu/ objects.
$(BUILD)/with_cuda: FORCE
	@mkdir -p $(dir $@)
	@echo $(WITH_CUDA) | cmp -s - $@ || echo $(WITH_CUDA) > $@

FORCE:

$(LIB): $(LIB_OBJS) $(BUILD)/with_cuda
	@rm -f $@
	ar rcs $@ $(LIB_OBJS)

$(RANKD): $(MAIN_OBJ) $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(CHECK_LIBS) $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

deps:
	@bash scripts/install-deps.sh

# The chart checks (tests/check_helm.c) render helm/rankd with
# scripts/helm-render, Helm's rendering in Go (Helm is not packaged for
# Debian), built offline from Debian's Go packages into build/ whatever SAN
# is: it is a tool of the suite, not part of rankd.
HELM_RENDER := build/helm-render
$(HELM_RENDER): scripts/helm-render/main.go
	@mkdir -p $(dir $@)
	@command -v go >/dev/null || { echo "go not found: run scripts/install-deps.sh (golang-go)"; exit 1; }
	GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$(CURDIR)/build/go-cache go build -o $@ ./scripts/helm-render

test-unit: $(HELM_RENDER)

# Suites run from the repository root; they find ../shared/golden and
# build/rankd from there. Check forks each test, so a crash fails one test.
# Each suite's output is kept in build/tests/<suite>.out; at the end, the
# failed suites' failure lines are printed again, so that the tail of a
# long log says which test failed and why.
test-unit: $(RANKD) $(TESTS)
	@failed=""; for t in $(TESTS); do \
	  { RANKD_BIN=$(RANKD) $$t 2>&1; echo $$? > $$t.rc; } | tee $$t.out; \
	  [ "$$(cat $$t.rc)" = 0 ] || failed="$$failed $${t##*/}"; \
	done; \
	if [ -n "$$failed" ]; then \
	  for f in $$failed; do echo "== $$f:"; grep -E '^[^ ]+:[0-9]+:[FE]:' $(BUILD)/tests/$$f.out | cut -c1-600; done; \
	  echo "test-unit (SAN=$(SAN)): failed:$$failed"; exit 1; \
	fi

test: deps
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-asan
	@$(MAKE) --no-print-directory test-fuzz

test-asan:
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(MAKE) --no-print-directory SAN=1 WITH_CUDA=0 test-unit

# ---- fuzzing (tests/fuzz, docs/fuzzing.md) ----------------------------------
#
# Each target runs for FUZZ_SECONDS on a copy of its seeds
# (tests/corpus/fuzz/<target>, which also hold the regression inputs of the
# bugs found so far) and fails on a crash, a leak, UB or a timeout; the
# input that did it lands in build/fuzz/artifacts/<target>/. make test runs
# each for FUZZ_CI_SECONDS, and skips them, saying so, only where clang or
# libFuzzer is missing (scripts/install-deps.sh installs them wherever the
# distribution packages them).
FUZZ_TARGETS    := events config safetensors rank_body
FUZZ_SECONDS    ?= 60
FUZZ_CI_SECONDS ?= 10
FUZZ_BINS       := $(FUZZ_TARGETS:%=build/fuzz/tests/fuzz/fuzz_%)
# What the targets link: the parsers and loaders, and what those call.
FUZZ_LIB_SRCS   := common/strmap.c common/sha256.c llm/safetensors.c llm/model.c llm/kernels.c \
                   llm/kern_scalar.c llm/kern_avx2.c llm/kern_avx512.c llm/kern_amx.c features/fs.c \
                   service/events.c service/config.c service/rankreq.c
FUZZ_LIB        := build/fuzz/libfuzzlib.a
FUZZ_LIB_OBJS   := $(FUZZ_LIB_SRCS:%.c=build/fuzz/%.o) build/fuzz/configs/default_yaml.o

$(FUZZ_LIB): $(FUZZ_LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

build/fuzz/tests/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(FUZZ_LIB) $(LDLIBS)

fuzz-build:
	@$(MAKE) --no-print-directory SAN=fuzz WITH_CUDA=0 $(FUZZ_BINS)

fuzz: deps
	@$(MAKE) --no-print-directory fuzz-build
	@bash scripts/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

test-fuzz:
	@if bash scripts/fuzz.sh --probe; then \
	  $(MAKE) --no-print-directory fuzz-build && bash scripts/fuzz.sh $(FUZZ_CI_SECONDS) $(FUZZ_TARGETS); \
	else echo "test-fuzz: skipped (see above)"; fi

bench: deps $(RANKD) $(BENCH_BINS)
	@bash scripts/install-deps.sh --bench
	@RANKD_BIN=$(RANKD) RANKD_SERVICE_BENCH=$(BUILD)/bench/bench_service bash bench/run_cpu.sh $(BUILD)/bench/bench_cpu

# The soak (bench/bench_service.c --soak): SOAK_RATE (1000) triggering
# events/s for SOAK_SECONDS against build/rankd serve in its own process,
# every TTL SOAK_TTL_S (20), one JSON line per SOAK_INTERVAL_S (15).
SOAK_SECONDS ?= 180
soak: deps $(RANKD) $(BUILD)/bench/bench_service
	@SOAK_SECONDS=$(SOAK_SECONDS) RANKD_BIN=$(RANKD) $(BUILD)/bench/bench_service --soak

# ---- GPU suite and bench (the GPU machine; docs/gpu.md) -----------------------
#
# They link only the model core (llm/ without the training files, which
# need OpenBLAS), the scorer and the engine, Check and jansson (both
# static), the CUDA runtime (static), libc, libm, pthread and libstdc++: the
# GPU machine has none of the other libraries, and no -dev packages. Where
# check.h or jansson.h is missing, the .debs that scripts/gpu-carry.sh put in
# .carry/debs are unpacked into .carry/sysroot and used from there; the
# golden files come from ../shared, or .carry/shared where that is absent.
GPU_CORE_SRCS := llm/safetensors.c llm/model.c llm/forward.c llm/kernels.c llm/pool.c llm/retrieval.c \
                 llm/quantize.c llm/kern_scalar.c llm/kern_avx2.c llm/kern_avx512.c llm/kern_amx.c \
                 ranker/rk_scorer.c
GPU_CORE_OBJS  = $(GPU_CORE_SRCS:%.c=$(BUILD)/%.o) $(GPU_OBJS)
GPU_TEST      := $(BUILD)/tests/check_gpu
GPU_BENCH     := $(BUILD)/bench/bench_gpu
GPU_SYSROOT   := .carry/sysroot
GPU_SYSLIB    := $(GPU_SYSROOT)/usr/lib/x86_64-linux-gnu
GPU_HAVE_DEV   = $(shell printf '\043include <check.h>\n\043include <jansson.h>\n' | \
                   $(CC) -E -x c - >/dev/null 2>&1 && echo yes)
GPU_SYS_FLAGS  = $(if $(GPU_HAVE_DEV),,-I$(GPU_SYSROOT)/usr/include)
GPU_LIBS       = $(if $(GPU_HAVE_DEV),,-L$(GPU_SYSLIB)) -l:libjansson.a $(CUDA_LIBS) -lm
GPU_CHECK_LIBS = -l:libcheck_pic.a -l:libsubunit.a $(GPU_LIBS)
GPU_SHARED     = $(if $(wildcard ../shared/golden),../shared,.carry/shared)
CSAN           = $(or $(shell command -v compute-sanitizer 2>/dev/null),$(wildcard $(CUDA_HOME)/bin/compute-sanitizer),\
                      $(CUDA_HOME)/compute-sanitizer/compute-sanitizer)
# The suite's test cases (Check tags) that the compute-sanitizer runs repeat.
GPU_MEMCHECK_TAGS  ?= sanitize big
GPU_RACECHECK_TAGS ?= sanitize
GPU_GOLDEN      = RANKD_GOLDEN_DIR=$${RANKD_GOLDEN_DIR:-$(GPU_SHARED)/golden}

# $(call gpu_sanitize,TOOL,TAGS,OPTIONS): the suite under compute-sanitizer,
# in one process (CK_FORK=no: one CUDA context, and no doubt that the tool
# follows every test); fails on a failed test and on any error the tool
# reports.
define gpu_sanitize
	@test -x $(CSAN) || { echo "compute-sanitizer not found (PATH, $(CUDA_HOME))"; exit 1; }
	@echo "== compute-sanitizer --tool $(1): test cases tagged '$(2)'"
	@log=$(BUILD)/tests/check_gpu.$(1).log; \
	{ $(GPU_GOLDEN) CK_INCLUDE_TAGS='$(2)' CK_FORK=no $(CSAN) --tool $(1) $(3) --error-exitcode 1 \
	    $(GPU_TEST) 2>&1; echo $$? > $$log.rc; } | tee $$log; \
	rc=$$(cat $$log.rc); \
	if grep -q 'ERROR SUMMARY: [1-9]' $$log; then echo "compute-sanitizer --tool $(1): errors (log: $$log)"; rc=1; fi; \
	exit $$rc
endef

$(GPU_TEST): tests/check_gpu.c $(GPU_CORE_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(filter %.c %.o,$^) $(GPU_CHECK_LIBS)

$(GPU_BENCH): bench/bench_gpu.c $(GPU_CORE_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -isystem $(CUDA_HOME)/include $(LDFLAGS) -o $@ $(filter %.c %.o,$^) $(GPU_LIBS)

$(GPU_SYSROOT)/unpacked:
	@ls .carry/debs/*.deb >/dev/null 2>&1 || { echo "check.h or jansson.h is not installed and" \
	  ".carry/debs holds no .debs: run 'bash scripts/gpu-carry.sh' on the build machine and carry" \
	  ".carry (docs/gpu.md)"; exit 1; }
	@mkdir -p $(GPU_SYSROOT)
	for f in .carry/debs/*.deb; do dpkg -x $$f $(GPU_SYSROOT) || exit 1; done
	@touch $@

# Both need the engine (nvcc and gpu/engine.cu): they test nothing else.
gpu-deps:
	$(if $(filter 1,$(WITH_CUDA)),,$(error the GPU suite and bench need a CUDA build (WITH_CUDA=1: nvcc and \
	  gpu/engine.cu); here WITH_CUDA=$(WITH_CUDA), nvcc $(if $(NVCC_PATH),at $(NVCC_PATH),not found), gpu/engine.cu \
	  $(if $(wildcard gpu/engine.cu),there,missing)))
	$(if $(GPU_HAVE_DEV),,@$(MAKE) --no-print-directory $(GPU_SYSROOT)/unpacked)

test-gpu: gpu-deps
	@$(MAKE) --no-print-directory GPU_SYS_CFLAGS="$(GPU_SYS_FLAGS)" $(GPU_TEST)
	$(GPU_GOLDEN) $(GPU_TEST)
	$(call gpu_sanitize,memcheck,$(GPU_MEMCHECK_TAGS),--leak-check full)
	$(call gpu_sanitize,racecheck,$(GPU_RACECHECK_TAGS),)

bench-gpu: gpu-deps
	@$(MAKE) --no-print-directory GPU_SYS_CFLAGS="$(GPU_SYS_FLAGS)" $(GPU_BENCH)
	@RANKD_SHARED=$(GPU_SHARED) bash bench/run_gpu.sh $(GPU_BENCH)

# The service on its embedded default: a model trained here, redis-server,
# the Kafka dev broker, a stream of events, ranked lists printed as they
# come (scripts/run.sh). RANKD_DEMO_SECONDS=N stops after N seconds.
run: deps $(RANKD)
	@RANKD_BIN=$(RANKD) bash scripts/run.sh

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
