import os

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
os.makedirs("$DATA/out/calc_script_folder_outputs/scaled", exist_ok=True)
os.makedirs("$DATA/out/calc_script_folder_outputs/index", exist_ok=True)
output = rs.band_calc(
    input_raster_list=[["$DATA/s2/S2_B08.tif", "nir"], ["$DATA/s2/S2_B11.tif", "swir"]],
    output_path="$DATA/out/calc_script_folder_outputs/index",
    expression_string=(
        '"nir" * 0.0001 @ $DATA/out/calc_script_folder_outputs/scaled @ nir_reflectance\n'
        '"swir" * 0.0001 @ $DATA/out/calc_script_folder_outputs/scaled @ swir_reflectance\n'
        '("nir_reflectance" - "swir_reflectance") / ("nir_reflectance" + "swir_reflectance")'
        " @ ndmi"
    ),
)
print(output.check)
print(output.paths)
rs.close()
