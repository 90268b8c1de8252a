// cuBLASLt through dlopen. The few types, enum values and entry points we use are declared here
// from NVIDIA's cublasLt.h (their values are part of the library's stable ABI), as TensorFlow and
// Paddle do, so the build needs no cuBLAS headers.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "cublaslt.h"

namespace {

// ---- the subset of cublasLt.h we use -------------------------------------------------------
typedef int cublasStatus_t;  // CUBLAS_STATUS_SUCCESS = 0
typedef struct cublasLtContext* cublasLtHandle_t;
typedef struct cublasLtMatmulDescOpaque* cublasLtMatmulDesc_t;
typedef struct cublasLtMatrixLayoutOpaque* cublasLtMatrixLayout_t;
typedef struct cublasLtMatmulPreferenceOpaque* cublasLtMatmulPreference_t;
struct cublasLtMatmulAlgo_t { uint64_t data[8]; };
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};
enum { CUBLAS_COMPUTE_32F = 68 };
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum {  // cublasLtMatmulDescAttributes_t
  CUBLASLT_MATMUL_DESC_TRANSA = 3,
  CUBLASLT_MATMUL_DESC_TRANSB = 4,
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,
};
enum { CUBLASLT_EPILOGUE_DEFAULT = 1, CUBLASLT_EPILOGUE_BIAS = 4 };
enum {  // cublasLtMatmulPreferenceAttributes_t
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,
};

struct Lt {
  cublasStatus_t (*Create)(cublasLtHandle_t*);
  cublasStatus_t (*MatmulDescCreate)(cublasLtMatmulDesc_t*, int computeType, cudaDataType_t scaleType);
  cublasStatus_t (*MatmulDescSetAttribute)(cublasLtMatmulDesc_t, int attr, const void* buf, size_t size);
  cublasStatus_t (*MatrixLayoutCreate)(cublasLtMatrixLayout_t*, cudaDataType_t type, uint64_t rows, uint64_t cols,
                                       int64_t ld);
  cublasStatus_t (*MatmulPreferenceCreate)(cublasLtMatmulPreference_t*);
  cublasStatus_t (*MatmulPreferenceSetAttribute)(cublasLtMatmulPreference_t, int attr, const void* buf, size_t size);
  cublasStatus_t (*MatmulPreferenceDestroy)(cublasLtMatmulPreference_t);
  cublasStatus_t (*MatmulAlgoGetHeuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                           cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                           cublasLtMatmulPreference_t, int requested,
                                           cublasLtMatmulHeuristicResult_t* results, int* returned);
  cublasStatus_t (*Matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void* alpha, const void* A,
                           cublasLtMatrixLayout_t, const void* B, cublasLtMatrixLayout_t, const void* beta,
                           const void* C, cublasLtMatrixLayout_t, void* D, cublasLtMatrixLayout_t,
                           const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspaceSize,
                           cudaStream_t stream);
  size_t (*GetVersion)();
};

Lt g_lt;
void* g_lib = nullptr;
std::string g_lib_path;
cublasLtHandle_t g_handle = nullptr;
void* g_workspace = nullptr;
const size_t WORKSPACE_BYTES = 32u << 20;  // NVIDIA's advice for Hopper
std::mutex g_mutex;

#define ltCheck(call)                                                                                 \
  do {                                                                                                \
    cublasStatus_t st_ = (call);                                                                      \
    if (st_ != 0)                                                                                     \
      graft::fail(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": cuBLASLt status " +     \
                  std::to_string(st_) + " (in " #call ")");                                           \
  } while (0)

// libcublasLt files inside the Python environment: PyTorch's CUDA wheels bring NVIDIA's cuBLAS
// package (nvidia/cublas/lib for CUDA 12, nvidia/cu13/lib for CUDA 13). Asked of python3, one path
// a line.
std::vector<std::string> pip_cublas_paths() {
  const char* cmd =
      "python3 -c \"import glob, os, sys\n"
      "for d in sys.path:\n"
      "    for p in sorted(glob.glob(os.path.join(d or '.', 'nvidia', '**', 'libcublasLt.so*'), recursive=True)):\n"
      "        print(p)\" 2>/dev/null";
  std::vector<std::string> out;
  FILE* f = popen(cmd, "r");
  if (!f) return out;
  char buf[2048];
  while (fgets(buf, sizeof buf, f)) {
    std::string line = buf;
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    if (!line.empty()) out.push_back(line);
  }
  pclose(f);
  return out;
}

void load_library() {
  std::vector<std::string> tried;
  auto try_open = [&](const std::string& name) {
    if (g_lib) return;
    tried.push_back(name);
    g_lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (g_lib) g_lib_path = name;
  };
  const char* names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  if (const char* env = std::getenv("GRAFT_CUBLASLT")) {
    std::string e = env;
    if (e.size() > 3 && e.find(".so") != std::string::npos) try_open(e);
    else for (const char* n : names) try_open(e + "/" + n);
  }
  for (const char* n : names) try_open(n);  // LD_LIBRARY_PATH, ldconfig cache
  if (!g_lib)
    for (auto& p : pip_cublas_paths()) try_open(p);
  for (const char* d : {"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"})
    for (const char* n : names) try_open(std::string(d) + "/" + n);
  if (!g_lib) {
    std::string msg = "cuBLASLt not found (needed for matrix products on the GPU). Tried:";
    for (auto& t : tried) msg += " " + t;
    msg += ". Install the CUDA toolkit's libcublasLt or PyTorch with CUDA, or set GRAFT_CUBLASLT to its folder.";
    graft::fail(msg);
  }
  auto sym = [&](const char* name) {
    void* p = dlsym(g_lib, name);
    if (!p) graft::fail(g_lib_path + " lacks " + name);
    return p;
  };
  g_lt.Create = (decltype(g_lt.Create))sym("cublasLtCreate");
  g_lt.MatmulDescCreate = (decltype(g_lt.MatmulDescCreate))sym("cublasLtMatmulDescCreate");
  g_lt.MatmulDescSetAttribute = (decltype(g_lt.MatmulDescSetAttribute))sym("cublasLtMatmulDescSetAttribute");
  g_lt.MatrixLayoutCreate = (decltype(g_lt.MatrixLayoutCreate))sym("cublasLtMatrixLayoutCreate");
  g_lt.MatmulPreferenceCreate = (decltype(g_lt.MatmulPreferenceCreate))sym("cublasLtMatmulPreferenceCreate");
  g_lt.MatmulPreferenceSetAttribute =
      (decltype(g_lt.MatmulPreferenceSetAttribute))sym("cublasLtMatmulPreferenceSetAttribute");
  g_lt.MatmulPreferenceDestroy = (decltype(g_lt.MatmulPreferenceDestroy))sym("cublasLtMatmulPreferenceDestroy");
  g_lt.MatmulAlgoGetHeuristic = (decltype(g_lt.MatmulAlgoGetHeuristic))sym("cublasLtMatmulAlgoGetHeuristic");
  g_lt.Matmul = (decltype(g_lt.Matmul))sym("cublasLtMatmul");
  g_lt.GetVersion = (decltype(g_lt.GetVersion))sym("cublasLtGetVersion");
  ltCheck(g_lt.Create(&g_handle));
  g_workspace = graft::gpu::device_alloc(WORKSPACE_BYTES, "cuBLASLt workspace");
}

// One cached plan per problem shape: descriptors plus the algorithm the heuristic picked.
// Layouts and the algorithm depend only on the key; pointers and scalars are set per call.
struct Plan {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
};
typedef std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int> PlanKey;
std::map<PlanKey, Plan> g_plans;

unsigned alignment_of(const void* p) {
  uintptr_t v = (uintptr_t)p;
  unsigned a = 256;
  while (a > 2 && (v % a) != 0) a /= 2;
  return a;
}

}  // namespace

namespace graft {
namespace gpu {

std::string cublaslt_init() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_lib) load_library();
  size_t v = g_lt.GetVersion();
  return g_lib_path + " (version " + std::to_string(v) + ")";
}

void gemm(void* C, GemmOut ctype, int ldc, const bf16* A, int lda, bool transA, const bf16* B, int ldb,
          bool transB, int M, int N, int K, float alpha, float beta, const bf16* bias, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  if (!g_lib) cublaslt_init();
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLASLt's "A" is our B.
  unsigned al_a = alignment_of(B), al_b = alignment_of(A), al_c = alignment_of(C);
  int epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  PlanKey key(M, N, K, lda, ldb, ldc, transA, transB, (int)ctype, epilogue, (int)al_a, (int)al_b, (int)al_c);
  auto it = g_plans.find(key);
  if (it == g_plans.end()) {
    Plan p;
    cudaDataType_t ab_type = CUDA_R_16BF, c_type = ctype == GemmOut::F32 ? CUDA_R_32F : CUDA_R_16BF;
    ltCheck(g_lt.MatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    int opA = transB ? CUBLAS_OP_T : CUBLAS_OP_N, opB = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    ltCheck(g_lt.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    ltCheck(g_lt.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    ltCheck(g_lt.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    // Stored shapes, column-major: our B^T is [N,K] (or [K,N] when transB), our A^T is [K,M] (or [M,K]).
    ltCheck(g_lt.MatrixLayoutCreate(&p.a, ab_type, transB ? K : N, transB ? N : K, ldb));
    ltCheck(g_lt.MatrixLayoutCreate(&p.b, ab_type, transA ? M : K, transA ? K : M, lda));
    ltCheck(g_lt.MatrixLayoutCreate(&p.c, c_type, N, M, ldc));
    cublasLtMatmulPreference_t pref;
    ltCheck(g_lt.MatmulPreferenceCreate(&pref));
    size_t ws = WORKSPACE_BYTES;
    ltCheck(g_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    ltCheck(g_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    ltCheck(g_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    ltCheck(g_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
    ltCheck(g_lt.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    ltCheck(g_lt.MatmulAlgoGetHeuristic(g_handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found));
    g_lt.MatmulPreferenceDestroy(pref);
    if (found == 0)
      fail("cuBLASLt has no algorithm for a bf16 product of M=" + std::to_string(M) + " N=" + std::to_string(N) +
           " K=" + std::to_string(K) + " (lda " + std::to_string(lda) + ", ldb " + std::to_string(ldb) + ", ldc " +
           std::to_string(ldc) + ")");
    p.algo = result.algo;
    it = g_plans.emplace(key, p).first;
  }
  Plan& p = it->second;
  if (bias) ltCheck(g_lt.MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  ltCheck(g_lt.Matmul(g_handle, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, g_workspace,
                      WORKSPACE_BYTES, stream));
}

}  // namespace gpu
}  // namespace graft
