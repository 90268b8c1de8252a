#include "core/device.h"

#include <omp.h>

#include "core/common.h"
#include "core/cuda_runtime.h"

namespace graft {

Device parse_device(const std::string& name, const std::string& where) {
  if (name == "cpu") return Device::cpu();
  if (name == "auto") {
    if (cuda::device_count() == 0) return Device::cpu();
    cuda::init(0);
    return Device::cuda(0);
  }
  int index = -1;
  if (name == "cuda") index = 0;
  else if (name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() < 9 &&
           name.find_first_not_of("0123456789", 5) == std::string::npos)
    index = std::stoi(name.substr(5));
  if (index < 0) fail(where + ": device \"" + name + "\" is not one of cpu, auto, cuda, cuda:N");
  if (!cuda::built())
    fail(where + ": device \"" + name + "\": this graft-trainer was built without CUDA (nvcc was not found at build "
         "time); use \"cpu\"");
  cuda::init(index);
  return Device::cuda(index);
}

std::string describe_device(Device d) {
  if (!d.is_cuda()) return "cpu (" + std::to_string(omp_get_max_threads()) + " threads)";
  return cuda::init(d.index);
}

}  // namespace graft
