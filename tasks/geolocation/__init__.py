"""Large-scale geolocation as classification over adaptive S2 cells (PlaNet, Weyand et al. 2016; MobileNets
paper Section 4.4, Table 11).

* :mod:`tasks.geolocation.s2`: vectorised S2 cell ids (numpy) for millions of photos at once;
* :mod:`tasks.geolocation.partition`: the adaptive partition (``python -m tasks.geolocation.partition``),
  the ``cells.csv`` format and the mapping from points to class labels;
* :mod:`tasks.geolocation.model`: one head per partition, the hierarchical product, haversine smoothing;
* :mod:`tasks.geolocation.train`: ``python -m tasks.geolocation.train`` on the task scaffold.

The geotagged CSVs and the image dataset are :mod:`datasets.geotagged`; the distance metrics are
:mod:`eval.geolocation`.
"""
