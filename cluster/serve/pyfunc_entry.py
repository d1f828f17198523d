"""The code file stored with every registered MKTN model ("models from code").

`mlflow.pyfunc.load_model` runs this file instead of unpickling a Python object: it names the model class,
`cluster.serve.pyfunc_model.MKTNPyfunc`, whose `load_context` reads the exported folder (safetensors + JSON).
"""

from mlflow.models import set_model

from cluster.serve.pyfunc_model import MKTNPyfunc

set_model(MKTNPyfunc())
