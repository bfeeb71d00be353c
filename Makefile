# rankd — one entry point.
#
#   make              build build/rankd (CUDA parts only where nvcc exists)
#   make test         install what is missing, build, run every Check suite,
#                     then run them again under ASan + UBSan
#   make bench        CPU benchmarks against the PyTorch anchor
#   make run          run rankd on its embedded default
#   make clean
#
# Optional parts are switched by variables: WITH_CUDA=0 skips the GPU code
# even where nvcc exists; SAN=1 builds with AddressSanitizer and
# UndefinedBehaviorSanitizer into build/asan.

CC      ?= gcc
NVCC    ?= nvcc
SAN     ?= 0
ifeq ($(SAN),1)
BUILD   ?= build/asan
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
                 -DRANKD_VERSION='"$(VERSION)"' -DRANKD_GIT='"$(GIT_REV)"' $(BLAS_CFLAGS)
OPT     ?= -O2
KOPT    ?= -O3
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
LDLIBS  := -lrdkafka -lmicrohttpd -ljansson -lyaml -lhiredis $(BLAS_LIBS) -lpthread -lm

ifeq ($(SAN),1)
CFLAGS_COMMON += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
endif
CFLAGS ?= $(OPT)
ALL_CFLAGS = $(CFLAGS_COMMON) $(CFLAGS)

# ---- sources ---------------------------------------------------------------

LLM_SRCS := llm/safetensors.c llm/model.c llm/forward.c llm/kernels.c llm/pool.c \
            llm/retrieval.c llm/quantize.c llm/eval.c llm/train_ops.c llm/train_model.c llm/train.c \
            llm/kern_scalar.c llm/kern_avx2.c llm/kern_avx512.c llm/kern_amx.c
SVC_SRCS := service/cmd_model.c service/cmd_train.c service/args.c service/events.c service/config.c \
            service/cmd_config.c service/cmd_kafka.c service/offsets.c service/metrics.c service/http.c \
            service/log.c service/rankreq.c service/serve.c
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

# CUDA: built only where nvcc exists (gpu/ is optional in every build).
WITH_CUDA ?= $(if $(shell command -v $(NVCC) 2>/dev/null),1,0)
CUDA_SRCS := $(if $(filter 1,$(WITH_CUDA)),$(wildcard gpu/*.cu))

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(CUDA_SRCS:%.cu=$(BUILD)/%.o) $(GEN_OBJS)
MAIN_OBJ  := $(MAIN_SRC:%.c=$(BUILD)/%.o)
LIB       := $(BUILD)/librankd.a
RANKD     := $(BUILD)/rankd

TEST_SRCS := $(wildcard tests/check_*.c)
TESTS     := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null || echo -lcheck)

BENCH_BINS := $(BUILD)/bench/bench_cpu $(BUILD)/bench/bench_service

.PHONY: all deps test test-unit test-asan bench run clean
all: $(RANKD)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) -O3 -std=c++17 -arch=sm_90a -I. -Xcompiler -Wall,-Werror -c $< -o $@

# configs/default.yaml is compiled in: service/config.c loads it first.
$(BUILD)/configs/default_yaml.c: configs/default.yaml scripts/embed.sh
	@mkdir -p $(dir $@)
	sh scripts/embed.sh svc_default_yaml $< > $@.tmp && mv $@.tmp $@

$(BUILD)/configs/default_yaml.o: $(BUILD)/configs/default_yaml.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

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

# Suites run from the repository root; they find ../shared/golden and
# build/rankd from there. Check forks each test, so a crash fails one test.
test-unit: $(RANKD) $(TESTS)
	@fail=0; for t in $(TESTS); do \
	  RANKD_BIN=$(RANKD) $$t || fail=1; \
	done; exit $$fail

test: deps
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-asan

test-asan:
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(MAKE) --no-print-directory SAN=1 WITH_CUDA=0 test-unit

bench: deps $(RANKD) $(BENCH_BINS)
	@bash scripts/install-deps.sh --bench
	@RANKD_BIN=$(RANKD) RANKD_SERVICE_BENCH=$(BUILD)/bench/bench_service bash bench/run_cpu.sh $(BUILD)/bench/bench_cpu

# The service on its embedded default: a model trained here, redis-server,
# the Kafka dev broker, a stream of events, ranked lists printed as they
# come (scripts/run.sh). RANKD_DEMO_SECONDS=N stops after N seconds.
run: deps $(RANKD)
	@RANKD_BIN=$(RANKD) bash scripts/run.sh

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
