import os

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output_directory = "$DATA/out/calc_script_named_outputs"
os.makedirs(output_directory, exist_ok=True)
expression = """# NDVI, then vegetation where NDVI is above a threshold
("nir" - "red") / ("nir" + "red") @ ndvi
# the threshold reads the output of the line above
where("ndvi" > 0.3, 1, 0) @ vegetation"""
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B08.tif", "$DATA/s2/S2_B04.tif"],
    output_path=output_directory,
    expression_string=expression,
    input_name_list=["nir", "red"],
)
print(output.check)
print(output.paths)
rs.close()
