// A complete kiln program: the default recipe through the C++ API.
//
//     example_fashion_mnist [EPOCHS] [DATA]
//
// Trains Input(784) → Dense(256, relu) → Dense(128, relu) → Dense(10, softmax) with Adam on
// Fashion-MNIST (or DATA, anything `kiln fit --data` takes), then evaluates on the test set.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <kiln/kiln.h>

int main(int argc, char** argv) {
    const int epochs = argc > 1 ? std::atoi(argv[1]) : 5;
    const std::string source = argc > 2 ? argv[2] : "fashion-mnist";

    kiln::data::Dataset data;
    kiln::Status status = kiln::data::load_dataset(source, {}, &data);
    if (!status.is_ok()) {
        std::fprintf(stderr, "kiln: error: %s\n", status.message().c_str());
        return 1;
    }

    try {
        kiln::Sequential model(
            {
                kiln::layers::Dense(256, "relu"),
                kiln::layers::Dense(128, "relu"),
                kiln::layers::Dense(10, "softmax"),
            },
            kiln::layers::Input({784}));
        model.compile(kiln::optimizers::Adam(), kiln::losses::SparseCategoricalCrossentropy(),
                      {"accuracy"});

        kiln::FitArgs args;
        args.epochs = epochs;
        args.batch_size = 32;
        args.validation_split = 0.1;
        args.verbose = 2;
        kiln::History history = model.fit(data.train.x, data.train.y, args);

        kiln::Logs test = model.evaluate(data.test.x, data.test.y);
        std::printf("test_loss: %.4f - test_accuracy: %.4f\n", *test.get("loss"),
                    *test.get("accuracy"));
        std::printf("best val_accuracy: %.4f\n",
                    *std::max_element(history.history["val_accuracy"].begin(),
                                      history.history["val_accuracy"].end()));
    } catch (const kiln::Error& e) {
        std::fprintf(stderr, "kiln: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
