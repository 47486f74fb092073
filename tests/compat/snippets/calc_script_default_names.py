import os

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
folder = "$DATA/out/calc_script_default_names"
os.makedirs(folder, exist_ok=True)
output = rs.band_calc(
    input_raster_list=["$DATA/s2/S2_B02.tif", "$DATA/s2/S2_B03.tif"],
    output_path=folder,
    expression_string='"blue" + "green"\n"blue" - "green"',
    input_name_list=["blue", "green"],
)
print(output.check)
print(output.paths)
rs.close()
