#include <omp.h>

#include "common.h"
#include "flux_backend.h"

namespace graft {

namespace {

struct CpuBackend : FluxBackend {
  FluxRunner runner;
  CpuBackend(FluxModel* m, LoraSet* l) : runner(m, l) {}
  std::string name() const override { return "cpu (" + std::to_string(omp_get_max_threads()) + " threads)"; }
  void forward(const FluxInputs& in, std::vector<float>& out) override { runner.forward(in, out); }
  void backward(const std::vector<float>& dout) override { runner.backward(dout); }
  void params_updated() override {}  // the runner reads lora->params directly
};

}  // namespace

std::unique_ptr<FluxBackend> make_cpu_backend(FluxModel* m, LoraSet* l) { return std::make_unique<CpuBackend>(m, l); }

#ifndef GRAFT_CUDA
bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
std::unique_ptr<FluxBackend> make_cuda_backend(FluxModel*, LoraSet*, int) {
  fail("this graft-trainer was built without CUDA (nvcc was not found at build time)");
}
#endif

std::unique_ptr<FluxBackend> make_backend(const std::string& device, FluxModel* m, LoraSet* l, const std::string& where) {
  if (device == "cpu") return make_cpu_backend(m, l);
  if (device == "auto") return cuda_device_count() > 0 ? make_cuda_backend(m, l, 0) : make_cpu_backend(m, l);
  int index = -1;
  if (device == "cuda") index = 0;
  else if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.find_first_not_of("0123456789", 5) == std::string::npos)
    index = std::stoi(device.substr(5));
  if (index < 0) fail(where + ": device \"" + device + "\" is not one of cpu, auto, cuda, cuda:N");
  if (!cuda_built())
    fail(where + ": device \"" + device + "\": this graft-trainer was built without CUDA (nvcc was not found at build time); use \"cpu\"");
  return make_cuda_backend(m, l, index);
}

}  // namespace graft
