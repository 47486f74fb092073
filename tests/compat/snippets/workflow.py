import os

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
folder = "$DATA/out/workflow"
os.makedirs(folder, exist_ok=True)
ndvi = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B08.tif", "$DATA/s2/S2_B04.tif"],
    output_path=folder + "/ndvi.tif",
    expression_string='("nir" - "red") / ("nir" + "red")',
    input_name_list=["nir", "red"],
)
classes = rs.band_calc(
    input_raster_list=[[ndvi.paths[0], "ndvi"]],
    output_path=folder,
    expression_string=(
        "# 1 water or bare, 2 sparse, 3 dense vegetation\n"
        'where("ndvi" < 0.2, 1, where("ndvi" < 0.45, 2, 3)) @ classes'
    ),
    output_datatype="Byte",
    output_nodata=0,
)
sieved = rs.band_sieve(
    input_bands=classes.paths, size=8, output_path=folder, connected=True, prefix="sieve_"
)
dilated = rs.band_dilation(
    input_bands=sieved.paths, value_list=[3], size=2, output_path=folder, prefix="dilation_"
)
eroded = rs.band_erosion(
    input_bands=dilated.paths, value_list=[1], size=1, output_path=folder, prefix="erosion_"
)
for step in (ndvi, classes, sieved, dilated, eroded):
    print(step.check)
for step in (ndvi, classes, sieved, dilated, eroded):
    print(step.paths)
rs.close()
