// Internal to the library: the image layers (src/layers_conv.cpp) and what they share with the
// dense layers (src/layers.cpp).
#pragma once

#include <string>
#include <vector>

#include "kiln/layers.h"
#include "kiln/model_config.h"
#include "kiln/ops.h"
#include "kiln/status.h"
#include "kiln/tensor.h"

namespace kiln {
namespace detail {

// For messages listing what kiln has.
constexpr const char* kImageLayerClasses =
    "Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D, BatchNormalization, Reshape";

// Throw kiln::Error naming the layer for an activation or initializer kiln does not have.
ActivationSpec activation_or_throw(const std::string& name, const std::string& layer);
void check_initializer(const std::string& name, const std::string& layer);

// The layer for one of kImageLayerClasses, or null for any other class.
LayerPtr image_layer_from_config(const LayerConfig& config);
bool is_image_layer_class(const std::string& class_name);

// The weights (Keras's names, shapes and order) an image layer has on an input of one sample's
// shape `*shape`, which becomes the layer's output shape. For model files: a config that no
// layer can be built from is an invalid_argument naming the layer.
Status image_layer_weights(const LayerConfig& config, Shape* shape,
                           std::vector<ParamInfo>* weights);

}  // namespace detail
}  // namespace kiln
