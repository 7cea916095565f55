#include "ops/cuda/cublaslt.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <type_traits>

#include "rwkv/error.h"

#define RWKV_STRINGIFY2(x) #x
#define RWKV_STRINGIFY(x) RWKV_STRINGIFY2(x)

namespace rwkv::cuda {
namespace {

CublasLt open_cublaslt() {
  void* lib = nullptr;
  // The toolkit's soname first, then whatever the loader finds.
  for (const char* name : {"libcublasLt.so." RWKV_STRINGIFY(CUBLAS_VER_MAJOR), "libcublasLt.so"}) {
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
  }
  if (!lib) fail("CUDA: cannot open cuBLASLt (libcublasLt.so): ", dlerror());
  CublasLt lt{};
  const auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (!fn) fail("CUDA: cuBLASLt has no ", name);
  };
  sym(lt.create, "cublasLtCreate");
  sym(lt.destroy, "cublasLtDestroy");
  sym(lt.desc_create, "cublasLtMatmulDescCreate");
  sym(lt.desc_destroy, "cublasLtMatmulDescDestroy");
  sym(lt.desc_set, "cublasLtMatmulDescSetAttribute");
  sym(lt.layout_create, "cublasLtMatrixLayoutCreate");
  sym(lt.layout_destroy, "cublasLtMatrixLayoutDestroy");
  sym(lt.pref_create, "cublasLtMatmulPreferenceCreate");
  sym(lt.pref_destroy, "cublasLtMatmulPreferenceDestroy");
  sym(lt.pref_set, "cublasLtMatmulPreferenceSetAttribute");
  sym(lt.heuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(lt.matmul, "cublasLtMatmul");
  sym(lt.status_string, "cublasLtGetStatusString");
  return lt;
}

}  // namespace

const CublasLt& cublaslt() {
  static std::once_flag once;
  static CublasLt lt;
  static std::string error;
  std::call_once(once, [] {
    try {
      lt = open_cublaslt();
    } catch (const Error& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw Error(error);
  return lt;
}

void check_lt(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail("cuBLASLt: ", what, ": ", cublaslt().status_string(status));
}

}  // namespace rwkv::cuda
