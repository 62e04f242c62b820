"""The machinery behind the lesson: what makes model.py, data.py and train.py safe, quick and kept.

    checkpoint   loads a saved checkpoint safely and checks what it holds
    runs         run folders: one per experiment, locked while a run writes, found again later
    cli          one-line errors, flag ranges, device choice, Ctrl-C
    fast_mnist   data.py's batches, bit for bit, from the images held in one tensor
    cuda_graph   train.py's step replayed as a CUDA graph
    mnist_files  the four raw MNIST files, checked before torchvision reads them
    plots        the pictures train.py, evaluate.py and compare.py draw
    evidence     which pixels pushed the network to its answer
    image_files  any image file, opened safely; photo: a digit made to look like MNIST
    page/        the draw page's HTML, CSS and JavaScript

Importing the package imports none of them and changes nothing.
"""
