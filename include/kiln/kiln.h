// kiln: a GPU-native training engine with Keras's API. Include this one header.
#pragma once

#include "kiln/backend.h"
#include "kiln/callbacks.h"
#include "kiln/data.h"
#include "kiln/layers.h"
#include "kiln/losses.h"
#include "kiln/model.h"
#include "kiln/model_config.h"
#include "kiln/ops.h"
#include "kiln/optimizers.h"
#include "kiln/status.h"
#include "kiln/tensor.h"
