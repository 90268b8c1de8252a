// Z-Image's forward and lora-grad, which model_commands.cpp's commands of those names hand a Z-Image
// checkpoint to, and the gradient writer both share.
#pragma once
#include <string>
#include <vector>

#include "core/device.h"
#include "core/safetensors.h"
#include "ops/quant.h"
#include "train/lora.h"

namespace graft {

bool is_zimage_path(const std::string& path);
int zimage_forward(const std::string& ckpt, const std::string& inputs, const std::string& outputs, Device device,
                   const std::string& lora_path, WeightFormat quantize);
int zimage_lora_grad(const std::string& ckpt, const std::string& inputs, const std::string& lora_path,
                     const std::string& outputs, Device device, bool checkpointing);

// Each adapter matrix's gradient (host values of lora.grads) as "grad.<the file's own key>".
void write_lora_grads(SafeTensorsWriter& w, const LoraSet& lora, const std::string& lora_path, const std::vector<float>& grads);

}  // namespace graft
